"""Which job runs a retention period lets go, and dropping whole day partitions of them.

``purge_task_runs`` deletes ``purgeable(cutoff)`` rows in batches. On a table converted to
daily partitions (``runs.partitions``) it first drops every partition recorded entirely
before the cutoff's day in which every run is purgeable (one scan counts them, the drop
takes milliseconds), and deletes in batches only the rest: partitions near the cutoff, and
old ones still holding a run that must stay (one that finished after the cutoff).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Iterator, Sequence

from django.db import OperationalError
from django.db.models import BooleanField, Count, Q, QuerySet
from django.db.models.expressions import RawSQL

from djcelery_ops.runs import partitions
from djcelery_ops.runs.models import TaskRun

# A run is written into the partition of the day of its first write, which comes after its
# first moment (received, started) by at most a flush interval, unless the recorder was
# held back: the batched delete looks this many days past the cutoff's day.
RECORDING_DELAY_MARGIN = datetime.timedelta(days=2)
DROP_ATTEMPTS = 3


def purgeable(cutoff: datetime.datetime) -> Q:
    """Finished before the cutoff, or never finished and last seen before it."""
    return Q(finished_at__lt=cutoff) | Q(
        finished_at__isnull=True, received_at__lt=cutoff, started_at__isnull=True
    ) | Q(finished_at__isnull=True, started_at__lt=cutoff)  # fmt: skip


def recorded_between(first: datetime.date | None, end: datetime.date) -> RawSQL:
    """``first <= recorded_on < end``: the partitions of those days only (pruning)."""
    key = partitions.KEY
    if first is None:
        return RawSQL(f"{key} < %s", [end], output_field=BooleanField())
    return RawSQL(f"{key} >= %s AND {key} < %s", [first, end], output_field=BooleanField())


@dataclasses.dataclass(frozen=True)
class Droppable:
    partition: partitions.Partition
    runs: int


def cutoff_day(cutoff: datetime.datetime) -> datetime.date:
    return cutoff.astimezone(datetime.UTC).date()


def droppable_partitions(cutoff: datetime.datetime) -> Iterator[Droppable]:
    """Partitions recorded before the cutoff's day whose every run is purgeable."""
    for partition in partitions.partitions():
        if partition.end > cutoff_day(cutoff):
            return
        counts = TaskRun.objects.filter(recorded_between(partition.start, partition.end)).aggregate(
            total=Count("id"), kept=Count("id", filter=~purgeable(cutoff))
        )
        if counts["kept"] == 0:
            yield Droppable(partition, counts["total"])


def batched_rest(
    cutoff: datetime.datetime, besides: Sequence[partitions.Partition] = ()
) -> QuerySet[TaskRun]:
    """The purgeable runs outside the partitions ``besides`` (those to be dropped)."""
    rows = TaskRun.objects.filter(purgeable(cutoff))
    if not partitions.is_partitioned():
        return rows
    end = cutoff_day(cutoff) + RECORDING_DELAY_MARGIN
    rows = rows.filter(recorded_between(None, end))
    if besides:
        days = [partition.start for partition in besides]  # one day each
        key = partitions.KEY
        rows = rows.filter(RawSQL(f"NOT ({key} = ANY(%s))", [days], output_field=BooleanField()))
    return rows


def drop(droppable: Droppable) -> float | None:
    """Drop one partition, retrying when its lock is not granted in time: the seconds the
    drop's transaction took, or None when a long query kept the lock every time."""
    for attempt in range(1, DROP_ATTEMPTS + 1):
        began = time.monotonic()
        try:
            partitions.drop_partition(droppable.partition)
        except OperationalError as error:
            # lock_not_available: a long query holds the table; try again shortly.
            if getattr(error.__cause__, "sqlstate", None) != "55P03":
                raise
            time.sleep(attempt)
            continue
        return time.monotonic() - began
    return None
