"""Structured logs: every event carries its fields in ``record.ops``, ready for JSON.

The fields go through ``djcelery_ops.redact.redact`` first (``DJCELERY_OPS_REDACT_KEYS``
and ``DJCELERY_OPS_REDACT_PATTERNS``), and the JSON formatter masks card-like values in
any message it formats.

Use ``djcelery_ops.logs.JsonFormatter`` on a handler to get one JSON object a line::

    LOGGING["formatters"]["json"] = {"()": "djcelery_ops.logs.JsonFormatter"}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from typing import Any

from djcelery_ops.redact import redact, redact_text

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        payload.update(getattr(record, "ops", {}))
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
