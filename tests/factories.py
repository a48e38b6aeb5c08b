"""Small builders of rows for tests that do not need a worker."""

from __future__ import annotations

import uuid
from typing import Any

from djcelery_ops.deadletter.record import FailureRecord
from djcelery_ops.deadletter.store import store_record
from djcelery_ops.models import DeadLetter


def failure_record(**fields: Any) -> FailureRecord:
    defaults: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "task_name": "shop.tasks.charge",
        "reason": DeadLetter.Reason.EXCEPTION,
        "args": [1],
        "kwargs": {"amount": 10},
        "queue": "payments",
        "options": {"queue": "payments", "headers": {}},
        "exception_class": "builtins.ValueError",
        "exception_message": "card 4242 declined",
        "traceback": 'Traceback:\n  File "/app/shop/tasks.py", line 12, in charge\nValueError',
    }
    defaults.update(fields)
    return FailureRecord(**defaults)


def dead_letter(**fields: Any) -> DeadLetter:
    return store_record(failure_record(**fields))
