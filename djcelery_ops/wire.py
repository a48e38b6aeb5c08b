"""The wire format: message headers djcelery_ops reads and writes, and how values travel.

Every header name the app puts on a Celery message, or reads from one, is defined here and
nowhere else, so that the publishing side (beat, replay, "run now", ``apply_async``) and the
consuming side (the worker's receivers) cannot drift apart. This module is part of the
shared core: it imports no part of the app.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from celery.exceptions import Reject
from django.core.serializers.json import DjangoJSONEncoder

# Per-call idempotency key: ``task.apply_async(args, headers={IDEMPOTENCY_KEY_HEADER: k})``.
# Its name has no prefix because publishers outside Python set it too.
IDEMPOTENCY_KEY_HEADER = "idempotency_key"
# Stamped at publish time (``before_task_publish``): the worker's delivery_info has no queue.
QUEUE_HEADER = "djcelery_ops_queue"
# On a replayed message: the id of the dead letter it replays.
REPLAY_HEADER = "djcelery_ops_replay_of"
# On every periodic dispatch of the locked scheduler: "<schedule name>@<slot time, UTC ISO>".
SCHEDULE_SLOT_HEADER = "djcelery_ops_schedule_slot"
# On a task re-sent to wait for an idempotency key another execution holds: since when
# (UTC ISO) it waits, so that the wait is bounded across re-sends.
KEY_WAIT_SINCE_HEADER = "djcelery_ops_key_wait_since"
# On a periodic task sent by the admin's "run now": who asked.
RUN_NOW_HEADER = "djcelery_ops_run_now_by"
# django-celery-beat's own header on periodic dispatches.
PERIODIC_TASK_NAME_HEADER = "periodic_task_name"

# Not headers: keys the app sets on a request while the worker holds it.
# Put into the request dict by the worker's main process (job runs): when it took the message.
RECEIVED_AT_KEY = "djcelery_ops_received_at"
STARTED_KEY = "djcelery_ops_started"
RETRIES_EXHAUSTED_KEY = "djcelery_ops_retries_exhausted"

# Keys of a Celery request that are protocol or worker state, not headers a publisher set.
CELERY_REQUEST_KEYS = frozenset(
    (
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "delivery_info",
        "reply_to",
        "correlation_id",
        "hostname",
        "args",
        "kwargs",
        "is_eager",
        "callbacks",
        "errbacks",
        "chain",
        "chord",
        "called_directly",
        "properties",
        "loglevel",
        "logfile",
        "utc",
        "headers",
        "taskset",
        "task_name",
        "content_type",
        "content_encoding",
        "priority",
        "compression",
        "embed",
        "_protected",
        "time_limit",
        "soft_time_limit",
        # set by djcelery_ops itself while the worker holds the request
        QUEUE_HEADER,
        STARTED_KEY,
        RETRIES_EXHAUSTED_KEY,
        RECEIVED_AT_KEY,
        KEY_WAIT_SINCE_HEADER,  # a replay must not inherit an old wait
    )
)


def request_header(request: Any, name: str) -> str | None:
    """A message header: a request attribute in the worker, in ``headers`` in ``apply()``."""
    headers = getattr(request, "headers", None)
    if isinstance(headers, Mapping) and headers.get(name):
        return str(headers[name])
    value = getattr(request, name, None)
    return str(value) if value else None


def custom_headers(request: Mapping[str, Any]) -> dict[str, Any]:
    """Headers the publisher added (tracing ids, tenant tags), which a replay must keep."""
    merged = dict(request)
    nested = request.get("headers")
    if isinstance(nested, Mapping):
        merged.update(nested)
    headers = {k: v for k, v in merged.items() if k not in CELERY_REQUEST_KEYS}
    return {k: v for k, v in jsonable(headers).items() if not str(k).startswith("_")}


class _LenientEncoder(DjangoJSONEncoder):
    """Dates, decimals and UUIDs as Django encodes them; anything else as its repr."""

    def default(self, o: Any) -> Any:
        try:
            return super().default(o)
        except TypeError:
            return {"__repr__": repr(o)}


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: what a person reads in the admin, never lossless."""
    return json.loads(json.dumps(value, cls=_LenientEncoder))


def to_json(value: Any) -> str:
    return json.dumps(value, cls=_LenientEncoder)


def call_digest(args: Any, kwargs: Any) -> str:
    """SHA-256 of a call's arguments: tells calls apart without keeping the arguments.

    Job runs store it; enqueue-time uniqueness keys a call by it. A tuple and a list of the
    same items are the same call (JSON has one array type, so does the message).
    """
    text = json.dumps(
        [list(args or ()), dict(kwargs or {})], sort_keys=True, default=repr, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()


def describe_exception(exc: BaseException | None) -> tuple[str, str]:
    """The exception's dotted class name and its message."""
    if exc is None:
        return "", ""
    cls = type(exc)
    # Celery's Reject keeps its message in .reason; str() would show the args tuple.
    message = getattr(exc, "reason", exc) if isinstance(exc, Reject) else exc
    return f"{cls.__module__}.{cls.__qualname__}", str(message)


def stamp_queue_header(
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    declare: Any = None,
    **kwargs: Any,
) -> None:
    """Receiver of ``before_task_publish``: remember the queue the message goes to."""
    if headers is None or QUEUE_HEADER in headers:
        return
    queue = declare[0].name if declare else routing_key
    if queue:
        headers[QUEUE_HEADER] = queue
