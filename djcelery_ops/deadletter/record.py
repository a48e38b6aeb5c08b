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
        return cls(**{key: value for key, value in data.items() if key in names})

    @property
    def failed_at_datetime(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.failed_at)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def record_from_request(
    request: Mapping[str, Any],
    *,
    task_name: str,
    reason: str,
    exc: BaseException | None,
    traceback: str,
    args: Any = None,
    kwargs: Any = None,
) -> FailureRecord:
    """Build a record from a Celery request dict (a Context's ``__dict__`` or a Request's)."""
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
    return FailureRecord(
        task_id=_text(request.get("id")),
        task_name=task_name,
        reason=reason,
        args=jsonable(request.get("args", []) if args is None else args),
        kwargs=jsonable(request.get("kwargs", {}) if kwargs is None else kwargs),
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
    options: dict[str, Any] = {"content_type": message.content_type}
    if message.content_type in accept:
        try:
            body = message.decode()
            if isinstance(body, list | tuple) and len(body) == 3:
                args, kwargs = body[0], body[1]
        except Exception as decode_error:  # a broken body is itself what we record
            options["decode_error"] = repr(decode_error)
    if not args and not kwargs:
        raw = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        options["raw_body"] = base64.b64encode(raw).decode("ascii")
        options["content_encoding"] = message.content_encoding
    record = record_from_request(
        {**headers, "delivery_info": message.delivery_info or {}, "hostname": hostname},
        task_name=_text(headers.get("task")) or "(unknown)",
        reason=reason,
        exc=exc,
        traceback="",
        args=args,
        kwargs=kwargs,
    )
    record.options.update(jsonable(options))
    if not record.task_id:
        record.task_id = _text(message.properties.get("correlation_id")) or "(no id)"
    return record
