"""``manage.py purge_idempotency_keys --older-than 30d [--dry-run] [--batch-size N]``.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 4 interrupted,
5 database lost mid-run.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from djcelery_ops.idempotency.models import IdempotencyKey
from djcelery_ops.management.base import OpsCommand

DEFAULT_BATCH_SIZE = 1000


class Command(OpsCommand):
    help = (
        "Delete idempotency keys finished longer ago than --older-than (done, failed, or "
        "with a lease that expired). A redelivery of a purged key runs its task again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_older_than_argument(parser, "Finished for")
        self.add_batch_size_argument(parser, DEFAULT_BATCH_SIZE)
        self.add_dry_run_argument(parser)

    def handle(self, *, older_than: str, dry_run: bool, batch_size: Any, **_: Any) -> None:
        cutoff = self.older_than(older_than)
        size = self.batch_size(batch_size) or DEFAULT_BATCH_SIZE
        rows = IdempotencyKey.objects.finished_before(cutoff)
        detail = f"older than {older_than}"
        self.purge_rows(rows, "idempotency key", detail, batch_size=size, dry_run=dry_run)
