"""Enqueue-time uniqueness (``unique_for=`` seconds), an optional extra.

A second ``apply_async`` of the same key while the first message is still pending (not
yet started) is not published: it is logged and ``apply_async`` returns a
``PendingDuplicate`` (an ``AsyncResult`` of the pending task). The lock is an
``EnqueueLock`` row in the database, taken in one statement like a key claim; it works
with any broker and ends with its message: when the body starts, or when the message ends
without running (expired, revoked, refused by the worker, dead-lettered: see
``idempotency.receivers``). It expires after ``unique_for`` seconds regardless, for a
message lost without a trace (a broker that drops it). It does not replace execution-time
idempotency: a redelivered message was published once and is not seen here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.result import AsyncResult

from djcelery_ops.db import Sql, column, now_plus_sql, now_sql, upsert
from djcelery_ops.idempotency.keys import call_fingerprint, key_from_option, normalise_key
from djcelery_ops.idempotency.models import EnqueueLock
from djcelery_ops.logs import log_event
from djcelery_ops.wire import IDEMPOTENCY_KEY_HEADER

logger = logging.getLogger("djcelery_ops.idempotency")


if TYPE_CHECKING:
    _AsyncResultBase = AsyncResult[Any]
else:  # AsyncResult is generic only in celery-types
    _AsyncResultBase = AsyncResult


class PendingDuplicate(_AsyncResultBase):
    """Returned by ``apply_async`` instead of publishing: the pending task's result."""

    duplicate = True


def enqueue_key(task: Any, args: Any, kwargs: Any, headers: Any) -> str:
    header = (headers or {}).get(IDEMPOTENCY_KEY_HEADER) if isinstance(headers, dict) else None
    key = header or key_from_option(task, args, kwargs)
    return normalise_key("unique:" + (key or call_fingerprint(task.name, args, kwargs)))


def acquire_enqueue_lock(key: str, task_id: str, seconds: float) -> str | None:
    """Take the lock for ``task_id``; None when taken, else the pending task's id."""
    taken = upsert(
        EnqueueLock,
        conflict="key",
        values={"key": key, "task_id": task_id, "expires_at": now_plus_sql(seconds)},
        where=Sql(f"{column('expires_at')} < {now_sql().text}"),
        returning="task_id",
    )
    if taken is not None:
        return None
    pending = EnqueueLock.objects.filter(key=key).values_list("task_id", flat=True).first()
    return pending or ""


def apply_async_unique(
    task: Any, args: Any, kwargs: Any, options: dict[str, Any], publish: Callable[..., Any]
) -> Any:
    key = enqueue_key(task, args, kwargs, options.get("headers"))
    task_id = options.get("task_id") or str(uuid.uuid4())
    pending = acquire_enqueue_lock(key, task_id, float(task.unique_for))
    if pending is not None:
        log_event(
            "unique.duplicate_dropped",
            task_name=task.name,
            unique_key=key,
            pending_task_id=pending,
        )
        return PendingDuplicate(pending, app=task.app)
    try:
        return publish(**{**options, "task_id": task_id})
    except BaseException:
        EnqueueLock.objects.filter(key=key, task_id=task_id).delete()
        raise


def release_enqueue_lock(task: Any, args: Any, kwargs: Any, task_id: str | None) -> None:
    """The message is no longer pending: let the next enqueue of the key through."""
    if not task_id:
        return
    key = enqueue_key(task, args, kwargs, getattr(task.request, "headers", None))
    EnqueueLock.objects.filter(key=key, task_id=task_id).delete()
