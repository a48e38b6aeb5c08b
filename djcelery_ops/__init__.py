"""djcelery_ops: the operations layer for Django projects that run Celery.

The public surface is this module's ``__all__``, plus ``djcelery_ops.models`` (the models,
to query with the ORM) and ``djcelery_ops.signals`` (signals to receive). Everything else
is internal and may move between releases. Names are loaded on first use, so that
``import djcelery_ops`` (in settings, in ``INSTALLED_APPS``) imports nothing of Django's
models or Celery's worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# Public name: (internal module, name there).
_PUBLIC = {
    # Tasks
    "OpsTask": ("djcelery_ops.task.base", "OpsTask"),
    "ops_task": ("djcelery_ops.task.base", "ops_task"),
    "PermanentError": ("djcelery_ops.exceptions", "PermanentError"),
    "TransientError": ("djcelery_ops.exceptions", "TransientError"),
    # Idempotency
    "IdempotencyKeyBusy": ("djcelery_ops.idempotency.execution", "IdempotencyKeyBusy"),
    "current_idempotency_key": ("djcelery_ops.idempotency.execution", "current_idempotency_key"),
    "idempotency_headers": ("djcelery_ops.idempotency.keys", "idempotency_headers"),
    "per_schedule_slot": ("djcelery_ops.idempotency.keys", "per_schedule_slot"),
    "PendingDuplicate": ("djcelery_ops.idempotency.unique", "PendingDuplicate"),
    # Dead letters
    "DeadLetterSelection": ("djcelery_ops.deadletter.selection", "Selection"),
    "replay_dead_letters": ("djcelery_ops.deadletter.replay", "replay"),
    "discard_dead_letters": ("djcelery_ops.deadletter.discard", "discard"),
    "purge_dead_letters": ("djcelery_ops.deadletter.discard", "purge"),
    "ReplayError": ("djcelery_ops.deadletter.outbox", "ReplayError"),
    # Periodic jobs
    "Schedule": ("djcelery_ops.schedules.declarations", "Schedule"),
    "LockedDatabaseScheduler": ("djcelery_ops.schedules.scheduler", "LockedDatabaseScheduler"),
    # Logs
    "JsonFormatter": ("djcelery_ops.jsonlogs", "JsonFormatter"),
}

__all__ = [
    "DeadLetterSelection",
    "IdempotencyKeyBusy",
    "JsonFormatter",
    "LockedDatabaseScheduler",
    "OpsTask",
    "PendingDuplicate",
    "PermanentError",
    "ReplayError",
    "Schedule",
    "TransientError",
    "current_idempotency_key",
    "discard_dead_letters",
    "idempotency_headers",
    "ops_task",
    "per_schedule_slot",
    "purge_dead_letters",
    "replay_dead_letters",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ loads them
    from djcelery_ops.deadletter.discard import discard as discard_dead_letters
    from djcelery_ops.deadletter.discard import purge as purge_dead_letters
    from djcelery_ops.deadletter.outbox import ReplayError
    from djcelery_ops.deadletter.replay import replay as replay_dead_letters
    from djcelery_ops.deadletter.selection import Selection as DeadLetterSelection
    from djcelery_ops.exceptions import PermanentError, TransientError
    from djcelery_ops.idempotency.execution import IdempotencyKeyBusy, current_idempotency_key
    from djcelery_ops.idempotency.keys import idempotency_headers, per_schedule_slot
    from djcelery_ops.idempotency.unique import PendingDuplicate
    from djcelery_ops.jsonlogs import JsonFormatter
    from djcelery_ops.schedules.declarations import Schedule
    from djcelery_ops.schedules.scheduler import LockedDatabaseScheduler
    from djcelery_ops.task.base import OpsTask, ops_task


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'djcelery_ops' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next access is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
