"""``manage.py discard_dead_letters``: mark pending dead letters discarded, with a reason.

Exit codes: 0 done (or nothing to do), 1 bad input.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from djcelery_ops.deadletter.services import discard, plan
from djcelery_ops.management.commands import _dead_letters as common


class Command(BaseCommand):
    help = "Discard pending dead letters (they stay for the record, marked discarded)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        common.add_filter_arguments(parser)
        common.add_actor_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        selection = common.selection_from_options(options)
        by = common.actor_from_options(options)
        batch_size = common.parse_positive_int(options["batch_size"], "--batch-size")
        rows = selection.queryset(status=None if selection.ids else "pending")
        if options["dry_run"]:
            for line in common.plan_lines("discard", plan(rows, action="discard")):
                self.stdout.write(line)
            return
        outcome = discard(rows, by=by, reason=options["reason"], batch_size=batch_size)
        self.stdout.write(f"Discarded {outcome.done} dead letter{'s' * (outcome.done != 1)}.")
        for line in common.skipped_lines(dict(outcome.skipped)):
            self.stdout.write(line)
