"""``manage.py discard_dead_letters``: mark pending dead letters discarded, with a reason.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 4 interrupted.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from djcelery_ops.deadletter.services import discard
from djcelery_ops.management.base import OpsCommand, plural
from djcelery_ops.management.commands import _dead_letters as common


class Command(OpsCommand):
    help = "Discard pending dead letters (they stay for the record, marked discarded)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        common.add_filter_arguments(parser)
        common.add_actor_arguments(parser)

    def handle(
        self,
        *,
        dry_run: bool,
        reason: str,
        by: str | None,
        batch_size: str | None,
        **options: Any,
    ) -> None:
        selection = common.selection_from_options(options)
        actor = common.actor(dry_run=dry_run, reason=reason, by=by)
        size = self.batch_size(batch_size)
        if not common.announce_and_plan(self, "discard", selection, dry_run=dry_run):
            return
        rows = common.matching_rows(selection)
        outcome = discard(rows, by=actor, reason=reason, batch_size=size)
        self.stdout.write(f"Discarded {plural(outcome.done, 'dead letter')}.")
        for line in common.skipped_lines(dict(outcome.skipped)):
            self.stdout.write(line)
