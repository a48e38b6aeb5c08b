"""The idempotency key of a call: the per-call header, else the task's option."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from djcelery_ops.wire import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAY_HEADER,
    SCHEDULE_SLOT_HEADER,
    call_digest,
    request_header,
)

MAX_KEY_LENGTH = 255


def idempotency_headers(key: str) -> dict[str, str]:
    """Headers for a per-call key: ``task.apply_async(args, headers=idempotency_headers(k))``."""
    return {IDEMPOTENCY_KEY_HEADER: key}


def per_schedule_slot(*args: Any, **kwargs: Any) -> str | None:
    """An ``idempotency_key`` for periodic tasks: one run per schedule slot.

    ``@ops_task(idempotency_key=per_schedule_slot)``: a slot beat dispatches again after a
    crash (``last_run_at`` was not saved yet) has the same key and does not run twice. Calls
    not sent by beat carry no slot and run without a key.
    """
    from celery import current_task

    return slot_key(current_task.request) if current_task else None


def slot_key(request: Any) -> str | None:
    """The schedule slot beat stamped on the message (``"<name>@<slot>"``), if any."""
    return request_header(request, SCHEDULE_SLOT_HEADER)


def replay_key(request: Any) -> str | None:
    """A replayed delivery is keyed by its task id.

    The replay outbox publishes a replay again, with the same task id, when the broker did
    not confirm it (``deadletter.outbox``); keyed so, the copy that did arrive and the one
    published again run once between them.
    """
    if request.id and request_header(request, REPLAY_HEADER):
        return f"replay:{request.id}"
    return None


def delivery_key(request: Any) -> str | None:
    """The key of a delivery that has none of its own: a replay runs once per task id, a
    beat dispatch once per schedule slot (a slot published twice in a failover)."""
    return replay_key(request) or slot_key(request)


def header_key(request: Any) -> str | None:
    """The key a publisher put in the message headers, in the worker or in ``apply()``."""
    return request_header(request, IDEMPOTENCY_KEY_HEADER)


def key_option(task: Any) -> Any:
    """The ``idempotency_key`` option unbound: a function given to the decorator would
    otherwise become a method of the task class."""
    unproxy = getattr(task, "_get_current_object", None)  # shared_task returns a Proxy
    option = inspect.getattr_static(unproxy() if unproxy else task, "idempotency_key", None)
    return option.__func__ if isinstance(option, staticmethod | classmethod) else option


def bound_arguments(task: Any, args: Any, kwargs: Any) -> dict[str, Any]:
    """The call's arguments by parameter name (``bind=True`` tasks: without ``self``)."""
    try:
        bound = inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError:
        return dict(kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def key_from_option(task: Any, args: Any, kwargs: Any) -> str | None:
    """Apply the task's option to the call's arguments; None when the task has none."""
    option = key_option(task)
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    if option is None:
        return None
    if isinstance(option, str):
        try:
            value: Any = option.format(*args, **bound_arguments(task, args, kwargs))
        except (KeyError, IndexError) as missing:
            raise ImproperlyConfigured(
                f"idempotency_key {option!r} of {task.name} names {missing}, "
                "which is not an argument of the task"
            ) from missing
    elif callable(option):
        value = option(*args, **kwargs)
    else:
        raise ImproperlyConfigured(
            f"idempotency_key of {task.name} must be a format string or a callable"
        )
    return None if value is None else normalise_key(str(value))


def normalise_key(key: str) -> str:
    """Keys over the column size keep a readable prefix and a hash of the whole."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: MAX_KEY_LENGTH - len(digest) - 1]}#{digest}"


def call_fingerprint(task_name: str, args: Any, kwargs: Any) -> str:
    """A key for a call by its task name and arguments (enqueue-time uniqueness)."""
    return f"{task_name}:{call_digest(args, kwargs)}"
