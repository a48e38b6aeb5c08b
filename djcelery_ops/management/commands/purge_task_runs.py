"""``manage.py purge_task_runs``: delete job runs older than a retention period, in batches.

On a table converted to daily partitions (``partition_task_runs``) whole days go by
dropping their partition; the rest is deleted in batches.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 4 interrupted,
5 database lost mid-run.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from djcelery_ops.db import BatchedDelete, delete_in_batches
from djcelery_ops.management.base import OpsCommand, plural
from djcelery_ops.runs import partitions, retention
from djcelery_ops.runs.models import TaskRun

DEFAULT_BATCH_SIZE = 10_000
purgeable = retention.purgeable  # kept importable from here


class Command(OpsCommand):
    help = "Delete job runs (TaskRun rows) older than --older-than, in batches."

    def add_arguments(self, parser: ArgumentParser) -> None:
        self.add_older_than_argument(parser, "Retention")
        self.add_batch_size_argument(parser, DEFAULT_BATCH_SIZE)
        self.add_dry_run_argument(parser)

    def handle(self, *, older_than: str, batch_size: Any, dry_run: bool, **_: Any) -> None:
        cutoff = self.older_than(older_than)
        size = self.batch_size(batch_size) or DEFAULT_BATCH_SIZE
        detail = f"older than {older_than}"
        if not partitions.is_partitioned():
            runs = TaskRun.objects.filter(purgeable(cutoff))
            self.purge_rows(runs, "task run", detail, batch_size=size, dry_run=dry_run)
            return
        self.purge_partitioned(cutoff, detail, size, dry_run)

    def purge_partitioned(self, cutoff: Any, detail: str, size: int, dry_run: bool) -> None:
        droppable = list(retention.droppable_partitions(cutoff))
        rest = retention.batched_rest(cutoff, besides=[d.partition for d in droppable])
        total = sum(d.runs for d in droppable) + rest.count()
        if dry_run or not total:
            for d in droppable:
                self.say_drop("Would drop", d)
            self.report("purge", total, "task run", detail, dry_run=dry_run)
            return
        stats = BatchedDelete()
        with self.stopping_cleanly(stats, "task run", detail):
            for d in droppable:
                seconds = retention.drop(d)
                if seconds is None:
                    self.stdout.write(
                        f"Skipped partition {d.partition.name}: its lock was not granted "
                        f"within {partitions.LOCK_TIMEOUT}, {retention.DROP_ATTEMPTS} times; "
                        "run the command again later."
                    )
                    continue
                stats.record(d.runs, seconds)
                self.say_drop("Dropped", d)
            for deleted in delete_in_batches(rest, size, stats):
                self.progress("purge", deleted, total, "task run", stats)
        self.report("purge", stats.deleted, "task run", detail, dry_run=False)
        self.timing(stats)

    def say_drop(self, done: str, droppable: retention.Droppable) -> None:
        runs = plural(droppable.runs, "task run")
        self.stdout.write(f"{done} partition {droppable.partition.name} ({runs}).")
