"""Structured logs: every event carries its fields in ``record.ops``, ready for JSON.

The fields go through ``djcelery_ops.redact.redact`` first (``DJCELERY_OPS_REDACT_KEYS``
and ``DJCELERY_OPS_REDACT_PATTERNS``). ``djcelery_ops.JsonFormatter`` (``jsonlogs``, on
python-json-logger) writes one JSON object a line with these fields and the running task's
context::

    LOGGING["formatters"]["json"] = {"()": "djcelery_ops.JsonFormatter"}
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from djcelery_ops.redact import redact

logger = logging.getLogger("djcelery_ops.task")

_RECORD_FIELDS = ("task_id", "task_name", "reason", "queue", "retries", "exception_class")


def log_enabled(level: int) -> bool:
    """Whether ``log_event`` at ``level`` would log: a caller on the per-task path skips
    building the fields of an event nobody receives (``task.started`` is DEBUG)."""
    return logger.isEnabledFor(level)


def log_event(event: str, source: Any = None, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with the fields of ``source`` (a FailureRecord) and ``fields``."""
    if not logger.isEnabledFor(level):
        return
    data: dict[str, Any] = {"event": event}
    if dataclasses.is_dataclass(source):
        data.update({name: getattr(source, name) for name in _RECORD_FIELDS})
    data.update(fields)
    # Secrets never reach a handler: keys like "password" and card-like values are masked.
    data = redact(data)
    summary = " ".join(f"{key}={value}" for key, value in data.items() if key != "event")
    logger.log(level, "%s %s", event, summary, extra={"ops": data})


def __getattr__(name: str) -> Any:
    # ``djcelery_ops.logs.JsonFormatter`` (the name of earlier releases) still works; the
    # formatter lives apart so that logging events never needs python-json-logger.
    if name == "JsonFormatter":
        from djcelery_ops.jsonlogs import JsonFormatter

        return JsonFormatter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
