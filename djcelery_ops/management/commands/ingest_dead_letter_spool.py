"""Store dead letters that were spooled while the database was unreachable."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from djcelery_ops.deadletter.spool import ingest_spool, spool_dir, spooled_files
from djcelery_ops.management.base import OpsCommand


class Command(OpsCommand):
    help = "Store the dead letters kept in the local spool during a database outage."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only count the records.")

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        directory = spool_dir()
        if dry_run:
            count = len(spooled_files())
            self.stdout.write(f"Would ingest {count} spooled dead letters from {directory}.")
            return
        ingested, left = ingest_spool()
        self.stdout.write(f"Ingested {ingested} spooled dead letters; {left} left in {directory}.")
        if left:
            self.stderr.write("Files left in the spool could not be read; see the log.")
