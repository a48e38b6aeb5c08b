"""``manage.py purge_idempotency_keys --older-than 30d [--dry-run] [--batch-size N]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from djcelery_ops.db import delete_in_batches
from djcelery_ops.idempotency.models import IdempotencyKey
from djcelery_ops.management.base import duration_option


def _keys(count: int) -> str:
    return f"{count} idempotency key" + ("" if count == 1 else "s")


class Command(BaseCommand):
    help = (
        "Delete idempotency keys finished longer ago than --older-than (done, failed, or "
        "with a lease that expired). A redelivery of a purged key runs its task again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="age such as 30d, 12h, 90m")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--batch-size", type=int, default=1000, help="rows per DELETE")

    def handle(
        self, *args: Any, older_than: str, dry_run: bool, batch_size: int, **options: Any
    ) -> None:
        age = duration_option(older_than)
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1; got {batch_size}")
        rows = IdempotencyKey.objects.finished_before(timezone.now() - age)
        if dry_run:
            self.stdout.write(f"Would delete {_keys(rows.count())} older than {older_than}.")
            return
        deleted = 0
        for deleted in delete_in_batches(rows, batch_size):
            self.stdout.write(f"Deleted {deleted} so far...")
        self.stdout.write(f"Deleted {_keys(deleted)} older than {older_than}.")
