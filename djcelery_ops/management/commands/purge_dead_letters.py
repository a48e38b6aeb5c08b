"""``manage.py purge_dead_letters``: delete old closed dead letters in batches.

Exit codes: 0 done (or nothing to do), 1 bad input. Pending rows are never purged.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from djcelery_ops.deadletter.services import PURGEABLE, purge
from djcelery_ops.management.base import duration_option
from djcelery_ops.management.commands import _dead_letters as common


class Command(BaseCommand):
    help = "Delete dead letters closed (resolved, discarded) longer ago than --older-than."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--older-than", required=True, help="Unchanged for: 30d, 12h.")
        parser.add_argument(
            "--status",
            default="resolved,discarded",
            help=f"Comma-separated, among {', '.join(PURGEABLE)} (default: resolved,discarded).",
        )
        parser.add_argument("--batch-size", help="Rows deleted per transaction.")
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        age = duration_option(options["older_than"])
        statuses = sorted({part.strip() for part in options["status"].split(",") if part.strip()})
        unknown = [status for status in statuses if status not in PURGEABLE]
        if unknown or not statuses:
            raise CommandError(
                f"--status: {', '.join(unknown) or '(empty)'} cannot be purged; "
                f"choose among {', '.join(PURGEABLE)}."
            )
        batch_size = common.parse_positive_int(options["batch_size"], "--batch-size")
        count = purge(
            before=timezone.now() - age,
            statuses=statuses,
            batch_size=batch_size,
            dry_run=options["dry_run"],
        )
        verb = "Would purge" if options["dry_run"] else "Purged"
        self.stdout.write(
            f"{verb} {count} dead letter{'s' * (count != 1)} "
            f"({', '.join(statuses)}, unchanged for {options['older_than']})."
        )
