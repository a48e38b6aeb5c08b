"""Models of djcelery_ops; each concept lives in its part's package and is re-exported here."""

from __future__ import annotations

from djcelery_ops.deadletter.models import BulkAction, DeadLetter, DeliveryCount, Discard, Replay
from djcelery_ops.idempotency.models import EnqueueLock, IdempotencyKey
from djcelery_ops.runs.models import TaskRun
from djcelery_ops.schedules.models import ManagedSchedule, SchedulerLease

__all__ = [
    "BulkAction",
    "DeadLetter",
    "DeliveryCount",
    "Discard",
    "EnqueueLock",
    "IdempotencyKey",
    "ManagedSchedule",
    "Replay",
    "SchedulerLease",
    "TaskRun",
]
