"""Signal receivers of the idempotency part: an enqueue lock ends with its message.

A ``unique_for`` lock is released when the body starts; these receivers release it when
the message ends without starting, whatever its fate, so no ``apply_async`` returns a
``PendingDuplicate`` of a task that is gone:

- ``task_revoked`` (the worker's main process): revoked, or expired before it ran;
- ``task_unknown`` / ``task_rejected``: the worker refused the message;
- ``djcelery_ops.signals.dead_lettered``: dead-lettered, by whichever part kept it.

Each deletes the lock of that task id only (a newer message of the key holds its own id).
``connect()`` is called from ``AppConfig.ready()``; every receiver has a ``dispatch_uid``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app, signals
from django.db import DatabaseError, InterfaceError

from djcelery_ops.idempotency.models import EnqueueLock
from djcelery_ops.signals import dead_lettered

logger = logging.getLogger("djcelery_ops.idempotency")


def connect() -> None:
    signals.task_revoked.connect(release_revoked, dispatch_uid="djops.unique_revoked")
    signals.task_unknown.connect(release_unknown, dispatch_uid="djops.unique_unknown")
    signals.task_rejected.connect(release_rejected, dispatch_uid="djops.unique_rejected")
    dead_lettered.connect(release_dead_lettered, dispatch_uid="djops.unique_dead_lettered")


def release_lock_of(task_id: str | None) -> int:
    """Delete the enqueue lock ``task_id`` holds, if any; never raises (a lock left
    behind still expires after ``unique_for``)."""
    if not task_id:
        return 0
    try:
        return EnqueueLock.objects.filter(task_id=task_id).delete()[0]
    except (DatabaseError, InterfaceError):
        logger.warning("could not release the enqueue lock of %s; it expires", task_id)
        return 0


def message_task_id(message: Any) -> str | None:
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id") or (getattr(message, "properties", None) or {}).get(
        "correlation_id"
    )
    return str(task_id) if task_id else None


def release_revoked(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    release_lock_of(getattr(request, "id", None))


def release_unknown(sender: Any = None, id: str | None = None, **kwargs: Any) -> None:  # noqa: A002 - Celery's argument name
    release_lock_of(id)


def release_rejected(sender: Any = None, message: Any = None, **kwargs: Any) -> None:
    release_lock_of(message_task_id(message))


def release_dead_lettered(sender: Any = None, record: Any = None, **kwargs: Any) -> None:
    if may_hold_enqueue_lock(getattr(record, "task_name", "")):
        release_lock_of(getattr(record, "task_id", None))


def may_hold_enqueue_lock(task_name: str) -> bool:
    """Only a task with ``unique_for`` publishes under an enqueue lock: a failing task of
    any other kind costs no ``DELETE``. A name this process does not know may have."""
    task = current_app.tasks.get(task_name)
    return task is None or getattr(task, "unique_for", None) is not None
