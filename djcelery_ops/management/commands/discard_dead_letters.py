"""``manage.py discard_dead_letters``: mark pending dead letters discarded, with a reason.

Reads the selection in keyset batches (bounded memory); a run of more than one batch
prints "Discarded n/total" after each.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 4 interrupted.
"""

from __future__ import annotations

from argparse import ArgumentParser
from functools import partial
from typing import Any

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.services import Outcome, discard
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
        the_plan = common.announce_and_plan(self, "discard", selection, dry_run=dry_run)
        if the_plan is None:
            return
        rows = common.matching_rows(selection)
        progress = None
        if the_plan.total > (size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE):
            progress = partial(self._progress, the_plan.total)
        outcome = discard(
            rows, by=actor, reason=reason, batch_size=size, progress=progress, keep_ids=False
        )
        self.stdout.write(f"Discarded {plural(outcome.done, 'dead letter')}.")
        for line in common.skipped_lines(dict(outcome.skipped)):
            self.stdout.write(line)

    def _progress(self, total: int, outcome: Outcome, _claimed: list[int]) -> None:
        skipped = sum(outcome.skipped.values())
        self.stdout.write(f"Discarded {outcome.done}/{total} (skipped {skipped})")
