"""Run a periodic task once, now, outside its schedule (the admin's "run now" action)."""

from __future__ import annotations

import json
from typing import Any

from celery import current_app
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from djcelery_ops.deadletter.outbox import celery_app_problem
from djcelery_ops.wire import PERIODIC_TASK_NAME_HEADER, RUN_NOW_HEADER


def run_now(task: PeriodicTask, *, requested_by: str) -> None:
    """Send the task with its args, kwargs and queue once the transaction commits.

    It carries ``periodic_task_name`` like a beat dispatch, but no schedule-slot header: a
    manual run is not a slot, so idempotency does not fold it into the scheduled one.
    Refuses (``ImproperlyConfigured``) to send with Celery's fallback app (check E007).
    """
    problem = celery_app_problem(current_app)
    if problem:
        raise ImproperlyConfigured(f"Not sent: {problem}.")
    headers = {
        **json.loads(task.headers or "{}"),
        PERIODIC_TASK_NAME_HEADER: task.name,
        RUN_NOW_HEADER: requested_by,
    }
    options: dict[str, Any] = {"headers": headers}
    if task.queue:
        options["queue"] = task.queue
    if task.expire_seconds:
        options["expires"] = task.expire_seconds
    args, kwargs = json.loads(task.args or "[]"), json.loads(task.kwargs or "{}")
    transaction.on_commit(
        lambda: current_app.send_task(task.task, args=args, kwargs=kwargs, **options)
    )
