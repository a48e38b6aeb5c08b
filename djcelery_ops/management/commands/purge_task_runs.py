"""Delete job runs older than a retention period, in batches."""

from __future__ import annotations

import datetime
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Q
from django.utils import timezone

from djcelery_ops.db import delete_in_batches
from djcelery_ops.management.base import duration_option, positive_int_option
from djcelery_ops.runs.models import TaskRun


def purgeable(cutoff: datetime.datetime) -> Q:
    """Finished before the cutoff, or never finished and last seen before it."""
    return Q(finished_at__lt=cutoff) | Q(
        finished_at__isnull=True, received_at__lt=cutoff, started_at__isnull=True
    ) | Q(finished_at__isnull=True, started_at__lt=cutoff)  # fmt: skip


class Command(BaseCommand):
    help = "Delete job runs (TaskRun rows) older than --older-than, in batches."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--older-than", required=True, help="Retention, e.g. 14d, 12h, 2w.")
        parser.add_argument("--batch-size", type=int, default=10_000, help="Rows per DELETE.")
        parser.add_argument("--dry-run", action="store_true", help="Only count the rows.")

    def handle(
        self, *args: Any, older_than: str, batch_size: int, dry_run: bool, **options: Any
    ) -> None:
        batch_size = positive_int_option(batch_size, "--batch-size")
        cutoff = timezone.now() - duration_option(older_than)
        runs = TaskRun.objects.filter(purgeable(cutoff))
        total = runs.count()
        if dry_run:
            self.stdout.write(f"Would delete {total} task runs older than {older_than}.")
            return
        deleted = 0
        for deleted in delete_in_batches(runs, batch_size):
            self.stdout.write(f"Deleted {deleted} of {total} task runs.")
        self.stdout.write(f"Purged {deleted} task runs older than {older_than}.")
