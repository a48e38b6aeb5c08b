"""``manage.py purge_dead_letters``: delete old closed dead letters in batches.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 4 interrupted,
5 database lost mid-run.
Pending rows are never purged.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.services import PURGEABLE, purgeable
from djcelery_ops.management.base import OpsCommand

DEFAULT_STATUSES = "resolved,discarded"


def parse_statuses(text: str) -> list[str]:
    statuses = sorted({part.strip() for part in text.split(",") if part.strip()})
    unknown = [status for status in statuses if status not in PURGEABLE]
    if unknown or not statuses:
        raise CommandError(
            f"--status: {', '.join(unknown) or '(empty)'} cannot be purged; "
            f"choose among {', '.join(PURGEABLE)}."
        )
    return statuses


class Command(OpsCommand):
    help = "Delete dead letters closed (resolved, discarded) longer ago than --older-than."

    def add_arguments(self, parser: ArgumentParser) -> None:
        self.add_older_than_argument(parser, "Unchanged for")
        parser.add_argument(
            "--status",
            default=DEFAULT_STATUSES,
            help=f"Comma-separated, among {', '.join(PURGEABLE)} (default: {DEFAULT_STATUSES}).",
        )
        self.add_batch_size_argument(parser, None)
        self.add_dry_run_argument(parser)

    def handle(
        self, *, older_than: str, status: str, batch_size: str | None, dry_run: bool, **_: Any
    ) -> None:
        cutoff = self.older_than(older_than)
        statuses = parse_statuses(status)
        size = self.batch_size(batch_size) or ops_settings.DEAD_LETTER_PURGE_BATCH_SIZE
        rows = purgeable(before=cutoff, statuses=statuses)
        detail = f"({', '.join(statuses)}) unchanged for {older_than}"
        self.purge_rows(rows, "dead letter", detail, batch_size=size, dry_run=dry_run)
