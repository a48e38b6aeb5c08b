"""``manage.py purge_task_runs``: delete job runs older than a retention period, in batches.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 4 interrupted,
5 database lost mid-run.
"""

from __future__ import annotations

import datetime
from argparse import ArgumentParser
from typing import Any

from django.db.models import Q

from djcelery_ops.management.base import OpsCommand
from djcelery_ops.runs.models import TaskRun

DEFAULT_BATCH_SIZE = 10_000


def purgeable(cutoff: datetime.datetime) -> Q:
    """Finished before the cutoff, or never finished and last seen before it."""
    return Q(finished_at__lt=cutoff) | Q(
        finished_at__isnull=True, received_at__lt=cutoff, started_at__isnull=True
    ) | Q(finished_at__isnull=True, started_at__lt=cutoff)  # fmt: skip


class Command(OpsCommand):
    help = "Delete job runs (TaskRun rows) older than --older-than, in batches."

    def add_arguments(self, parser: ArgumentParser) -> None:
        self.add_older_than_argument(parser, "Retention")
        self.add_batch_size_argument(parser, DEFAULT_BATCH_SIZE)
        self.add_dry_run_argument(parser)

    def handle(self, *, older_than: str, batch_size: Any, dry_run: bool, **_: Any) -> None:
        cutoff = self.older_than(older_than)
        size = self.batch_size(batch_size) or DEFAULT_BATCH_SIZE
        runs = TaskRun.objects.filter(purgeable(cutoff))
        detail = f"older than {older_than}"
        self.purge_rows(runs, "task run", detail, batch_size=size, dry_run=dry_run)
