"""Store dead letters that were spooled while the database was unreachable."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from djcelery_ops.deadletter.spool import ingest_spool, quarantine_dir, spool_dir, spooled_files
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
        report = ingest_spool()
        for path, reason in report.quarantined:
            self.stderr.write(f"Quarantined {path.name}: {reason}")
        self.stdout.write(
            f"Ingested {report.ingested} spooled dead letters, quarantined "
            f"{len(report.quarantined)} in {quarantine_dir()}, {report.left} left in {directory}."
        )
        if report.left:
            raise CommandError(
                f"{report.left} spooled dead letters left: the database went away "
                f"({report.outage}). Run the command again when it answers."
            )
