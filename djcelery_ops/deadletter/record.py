"""``FailureRecord``: what is known of a final failure, built where the failure is seen.

A record is plain JSON-ready data, so it can be written to the database or, when the
database is unreachable, to the spool and ingested later unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from collections.abc import Collection, Mapping
from typing import Any

from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.call import (
    BLOCKED_LEGACY,
    BLOCKED_NEVER_DECODED,
    encode_call,
    serializer_name,
)
from djcelery_ops.storable import bounded_message, capped_text, storable_text
from djcelery_ops.wire import QUEUE_HEADER, custom_headers, describe_exception, jsonable, to_json


@dataclasses.dataclass
class FailureRecord:
    task_id: str
    task_name: str
    reason: str
    args: Any = dataclasses.field(default_factory=list)
    kwargs: Any = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    queue: str = ""
    periodic_task_name: str = ""
    root_id: str = ""
    parent_id: str = ""
    exception_class: str = ""
    exception_message: str = ""
    traceback: str = ""
    retries: int = 0
    worker_hostname: str = ""
    failed_at: str = dataclasses.field(default_factory=lambda: timezone.now().isoformat())
    # The call encoded as the delivery carried it (``deadletter.call``), or None and why not.
    # None with no blocker: ``args``/``kwargs`` are the call itself (a record built by hand).
    call: dict[str, Any] | None = None
    replay_blocker: str = ""

    def __post_init__(self) -> None:
        # Bounded and storable from the start, so a spool file is bounded too. Both steps
        # are idempotent: a record read back from the spool comes out unchanged.
        self.exception_message = bounded_message(self.exception_message)
        self.traceback = capped_text(
            storable_text(self.traceback), ops_settings.DEAD_LETTER_MAX_TRACEBACK_BYTES, "traceback"
        )

    def to_json(self) -> str:
        return to_json(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FailureRecord:
        data = json.loads(text)
        names = {field.name for field in dataclasses.fields(cls)}
        record = cls(**{key: value for key, value in data.items() if key in names})
        if "call" not in data and not record.replay_blocker:
            # Spooled by a version that kept no faithful copy: its args are the lossy ones.
            record.replay_blocker = BLOCKED_LEGACY
        return record

    @property
    def failed_at_datetime(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.failed_at)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def delivery_serializer(request: Mapping[str, Any], task_name: str) -> str:
    """The serializer the delivery was encoded with, as far as the request tells.

    The content type is known in the worker's main process and on AMQP (message
    properties); in a worker child on Redis it is not, and the task's serializer (else the
    app's ``task_serializer``) is what the message used unless the caller overrode it.
    """
    from celery import current_app

    properties = request.get("properties") or {}
    content_type = request.get("content_type") or properties.get("content_type")
    name = serializer_name(content_type)
    if name:
        return name
    task = current_app.tasks.get(task_name)
    return str(getattr(task, "serializer", None) or current_app.conf.task_serializer)


# Where the workflow the message carried is kept, in ``DeadLetter.options``.
WORKFLOW_KEY = "workflow"
# Why a plain replay of a chord header member is refused (``DeadLetter.replay_blocker``).
BLOCKED_CHORD_MEMBER = (
    "chord header member: replayed alone, the chord body would not run once with all results"
)


def workflow_from_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The rest of the workflow the message carried: ``chain`` (remaining links, reversed,
    as Celery carries them), ``callbacks`` (link), ``errbacks`` (link_error), and whether
    it was a chord header member. Signatures are dicts, so the result is JSON-ready."""
    workflow: dict[str, Any] = {}
    for key in ("chain", "callbacks", "errbacks"):
        value = request.get(key)
        if value and isinstance(value, list | tuple):
            sigs = [dict(sig) if isinstance(sig, Mapping) else sig for sig in value]
            workflow[key] = jsonable(sigs)
    if request.get("chord"):
        workflow["chord"] = True
    if request.get("group_index") is not None:
        workflow["group_index"] = request.get("group_index")
    return workflow


def record_from_request(
    request: Mapping[str, Any],
    *,
    task_name: str,
    reason: str,
    exc: BaseException | None,
    traceback: str,
    args: Any = None,
    kwargs: Any = None,
    decoded: bool = True,
) -> FailureRecord:
    """Build a record from a Celery request dict (a Context's ``__dict__`` or a Request's).

    ``decoded=False``: the message body was never decoded, so there is no call to keep.
    """
    delivery = request.get("delivery_info") or {}
    queue = request.get(QUEUE_HEADER) or delivery.get("routing_key") or ""
    exception_class, message = describe_exception(exc)
    timelimit = request.get("timelimit") or (None, None)
    options = {
        "queue": queue,
        "exchange": delivery.get("exchange"),
        "routing_key": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "headers": custom_headers(request),
        "root_id": request.get("root_id"),
        "parent_id": request.get("parent_id"),
        "group_id": request.get("group"),
        "shadow": request.get("shadow"),
        "time_limit": timelimit[0],
        "soft_time_limit": timelimit[1],
        "ignore_result": request.get("ignore_result"),
        "eta": request.get("eta"),
        "expires": request.get("expires"),
    }
    workflow = workflow_from_request(request)
    if workflow:
        options[WORKFLOW_KEY] = workflow
    args = request.get("args", []) if args is None else args
    kwargs = request.get("kwargs", {}) if kwargs is None else kwargs
    call, blocker = None, BLOCKED_NEVER_DECODED
    if decoded:
        call, blocker = encode_call(args, kwargs, delivery_serializer(request, task_name))
        if not blocker and workflow.get("chord"):
            blocker = BLOCKED_CHORD_MEMBER
    return FailureRecord(
        task_id=_text(request.get("id")),
        task_name=task_name,
        reason=reason,
        args=jsonable(args),
        kwargs=jsonable(kwargs),
        call=call,
        replay_blocker=blocker,
        options=jsonable(options),
        queue=_text(queue),
        periodic_task_name=_text(request.get("periodic_task_name")),
        root_id=_text(request.get("root_id")),
        parent_id=_text(request.get("parent_id")),
        exception_class=exception_class,
        exception_message=message,
        traceback=traceback or "",
        retries=int(request.get("retries") or 0),
        worker_hostname=_text(request.get("hostname")),
    )


def record_from_message(
    message: Any,
    *,
    reason: str,
    exc: BaseException | None,
    accept: Collection[str],
    hostname: str = "",
) -> FailureRecord:
    """Build a record from a kombu message that never reached a task.

    The body is decoded only when its content type is accepted: a disallowed type
    (pickle sent to a JSON worker) is kept as raw bytes, never deserialized.
    """
    headers = dict(message.headers or {})
    args: Any = []
    kwargs: Any = {}
    decoded = False
    options: dict[str, Any] = {"content_type": message.content_type}
    if message.content_type in accept:
        try:
            body = message.decode()
            if isinstance(body, list | tuple) and len(body) == 3:
                args, kwargs, decoded = body[0], body[1], True
        except Exception as decode_error:  # a broken body is itself what we record
            options["decode_error"] = repr(decode_error)
    if not decoded:
        # Kept unchanged for an explicit "republish the original message" (raw replay).
        raw = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        options["raw_body"] = base64.b64encode(raw).decode("ascii")
        options["content_encoding"] = message.content_encoding
        options["message_headers"] = headers
    record = record_from_request(
        {
            **headers,
            "delivery_info": message.delivery_info or {},
            "hostname": hostname,
            "content_type": message.content_type,
        },
        task_name=_text(headers.get("task")) or "(unknown)",
        reason=reason,
        exc=exc,
        traceback="",
        args=args,
        kwargs=kwargs,
        decoded=decoded,
    )
    record.options.update(jsonable(options))
    if not record.task_id:
        record.task_id = _text(message.properties.get("correlation_id")) or "(no id)"
    return record
