"""Delete job runs older than a retention period, in batches."""

from __future__ import annotations

import datetime
import re
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

from djcelery_ops.runs.models import TaskRun

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DURATION = re.compile(r"^(\d+)([smhdw])$")


def parse_duration(text: str) -> datetime.timedelta:
    """``90s``, ``30m``, ``12h``, ``14d``, ``2w``."""
    match = DURATION.match(text.strip())
    if not match or int(match[1]) == 0:
        raise CommandError(
            f"--older-than {text!r} is not a positive duration such as 90s, 30m, 12h, 14d or 2w."
        )
    return datetime.timedelta(**{UNITS[match[2]]: int(match[1])})


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
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}.")
        cutoff = timezone.now() - parse_duration(older_than)
        runs = TaskRun.objects.filter(purgeable(cutoff))
        total = runs.count()
        if dry_run:
            self.stdout.write(f"Would delete {total} task runs older than {older_than}.")
            return
        deleted = 0
        while True:
            batch = list(runs.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not batch:
                break
            deleted += TaskRun.objects.filter(pk__in=batch).delete()[0]
            self.stdout.write(f"Deleted {deleted} of {total} task runs.")
        self.stdout.write(f"Purged {deleted} task runs older than {older_than}.")
