"""``manage.py partition_task_runs``: daily partitions of the job-run table (PostgreSQL).

    partition_task_runs --convert [--dry-run]    swap the table for a partitioned one
    partition_task_runs --copy-unpartitioned     move the old table's rows across
    partition_task_runs [--days-ahead 7]         create the coming days' partitions (daily)

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input or a table in the
wrong state, 4 interrupted, 5 database lost mid-run.
"""

from __future__ import annotations

import datetime
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError
from django.db import connection

from djcelery_ops.db import BatchedDelete
from djcelery_ops.management.base import OpsCommand, plural, positive_int_option
from djcelery_ops.runs import partitions

DEFAULT_DAYS_AHEAD = 7
DEFAULT_BATCH_SIZE = 10_000


class Command(OpsCommand):
    help = "Partition the job-run table by day (PostgreSQL), or create its coming partitions."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--convert", action="store_true", help="Swap the table for a partitioned one."
        )
        parser.add_argument(
            "--copy-unpartitioned",
            action="store_true",
            help="Move the rows of the table kept by --convert into the partitions.",
        )
        parser.add_argument(
            "--days-ahead",
            default=DEFAULT_DAYS_AHEAD,
            help=f"Partitions to have ready after today (default: {DEFAULT_DAYS_AHEAD}).",
        )
        self.add_batch_size_argument(parser, DEFAULT_BATCH_SIZE)
        self.add_dry_run_argument(parser)

    def handle(
        self,
        *,
        convert: bool,
        copy_unpartitioned: bool,
        days_ahead: Any,
        batch_size: Any,
        dry_run: bool,
        **_: Any,
    ) -> None:
        ahead = positive_int_option(days_ahead, "--days-ahead", maximum=366)
        size = self.batch_size(batch_size) or DEFAULT_BATCH_SIZE
        if connection.vendor != "postgresql":
            raise CommandError("Daily partitions need PostgreSQL; this database is not.")
        if convert and copy_unpartitioned:
            raise CommandError("--convert and --copy-unpartitioned are separate steps.")
        if convert:
            self.convert(ahead, dry_run)
        elif not partitions.is_partitioned():
            raise CommandError(
                f"{partitions.table()} is not partitioned: run with --convert first."
            )
        elif copy_unpartitioned:
            self.copy(size, dry_run)
        else:
            self.create_ahead(ahead, dry_run)

    def convert(self, ahead: int, dry_run: bool) -> None:
        if dry_run:
            if partitions.is_partitioned():
                raise CommandError(f"{partitions.table()} is already partitioned.")
            now = partitions.today()
            statements = partitions.convert_sql(
                now - datetime.timedelta(days=1), now + datetime.timedelta(days=ahead)
            )
            self.stdout.write("Would run, in one transaction:")
            for statement in statements:
                self.stdout.write(f"{statement};")
            return
        try:
            statements = partitions.convert(ahead)
        except ValueError as error:
            raise CommandError(f"{error}.") from None
        created = sum(s.startswith("CREATE TABLE IF NOT EXISTS") for s in statements)
        self.stdout.write(
            f"Converted {partitions.table()} to daily partitions ({created} created); "
            f"its rows wait in {partitions.table()}{partitions.UNPARTITIONED_SUFFIX}: "
            "move them with --copy-unpartitioned."
        )

    def copy(self, size: int, dry_run: bool) -> None:
        old = partitions.table() + partitions.UNPARTITIONED_SUFFIX
        if not partitions.unpartitioned_left():
            self.nothing_to_do("copy", f"no table {old}")
            return
        total = partitions.unpartitioned_count()
        if dry_run:
            self.stdout.write(f"Would copy {plural(total, 'task run')} from {old}, then drop it.")
            return
        stats = BatchedDelete()
        with self.stopping_cleanly(stats, "task run", f"from {old}", verb="copy"):
            for moved in partitions.copy_unpartitioned(size, stats):
                self.progress("copy", moved, total, "task run", stats)
        self.stdout.write(f"Copied {plural(stats.deleted, 'task run')} from {old}; dropped it.")
        self.timing(stats)

    def create_ahead(self, ahead: int, dry_run: bool) -> None:
        now = partitions.today()
        last = now + datetime.timedelta(days=ahead)
        if dry_run:
            missing = [partitions.partition_name(d) for d in partitions.missing_days(now, last)]
            names = ", ".join(missing)
            self.report("create", len(missing), "partition", f"up to {last} {names}", dry_run=True)
            return
        created = partitions.create_partitions(now, last)
        self.report("create", len(created), "partition", f"up to {last}", dry_run=False)
