"""``djcelery_ops.JsonFormatter``: python-json-logger's formatter (the ``[jsonlogs]`` extra)
with djcelery_ops' fields, the running task's context, and secrets redacted.

One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``; the
fields of a djcelery_ops event (``record.ops``: ``event``, ``task_id``, ``duration``...)
at the top level; any ``extra=`` a caller passed; and, for a record logged while a Celery
task runs (in its body, or by djcelery_ops around it), ``task_id``, ``task_name``,
``root_id``, ``parent_id`` and ``retries`` of that task. Everything goes through
``djcelery_ops.redact`` (``DJCELERY_OPS_REDACT_KEYS`` and ``DJCELERY_OPS_REDACT_PATTERNS``).

Without python-json-logger installed, importing this module (which ``LOGGING``'s
``"()": "djcelery_ops.JsonFormatter"`` does) fails with how to install it.
"""

from __future__ import annotations

import logging
from typing import Any

from djcelery_ops.redact import redact

try:
    from pythonjsonlogger.json import JsonFormatter as _JsonFormatter
except ImportError as error:  # pragma: no cover - the dev extras install it
    raise ImportError(
        "djcelery_ops.JsonFormatter needs python-json-logger (3.1 or later): "
        "pip install 'djcelery-ops[jsonlogs]'"
    ) from error

# The fields of the running task a record carries, and where they are in its request.
TASK_CONTEXT = {
    "task_id": "id",
    "task_name": "task",
    "root_id": "root_id",
    "parent_id": "parent_id",
    "retries": "retries",
}


def task_context() -> dict[str, Any]:
    """The running Celery task's ids, name and retries; empty outside a task."""
    from celery import current_task

    task = current_task
    request = getattr(task, "request", None) if task else None
    if request is None or not getattr(request, "id", None):
        return {}
    context = {field: getattr(request, name, None) for field, name in TASK_CONTEXT.items()}
    context["task_name"] = context["task_name"] or task.name
    return {field: value for field, value in context.items() if value is not None}


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args and "fmt" not in kwargs:
            kwargs["fmt"] = "%(levelname)s %(name)s %(message)s"
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")
        super().__init__(*args, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        ops = log_data.pop("ops", None)  # a djcelery_ops event's fields go to the top level
        if isinstance(ops, dict):
            log_data.update(ops)
        for field, value in task_context().items():
            log_data.setdefault(field, value)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        redacted: dict[str, Any] = redact(log_data)
        return redacted


__all__ = ["JsonFormatter", "task_context"]
