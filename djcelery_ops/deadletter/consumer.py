"""``OpsConsumer``: messages that break Celery's consumer become dead letters.

Celery's ``Consumer.on_task_received`` catches only ``InvalidTaskError``,
``ContentDisallowed`` and ``DecodeError`` around the task strategy. A body that cannot be
decoded is logged CRITICAL and acked (gone); a body of the wrong shape (``{"a": 1}`` with a
task header) raises ``ValueError`` in ``Request.__init__`` and ends the worker's main
process, and a restarted worker ends again on the same message. Name this class in the
``worker_consumer`` setting (``CELERY_WORKER_CONSUMER =
"djcelery_ops.deadletter.consumer:OpsConsumer"``): each such message is recorded with
reason ``malformed_message`` (raw body in base64, headers kept), durably, and only then
acked; the worker goes on.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from celery.worker.consumer import Consumer
from vine import promise

from djcelery_ops.deadletter.capture import capture_failure
from djcelery_ops.deadletter.record import FailureRecord, record_from_message
from djcelery_ops.wire import jsonable

logger = logging.getLogger("djcelery_ops.deadletter")
MALFORMED = "malformed_message"


class OpsConsumer(Consumer):
    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)
        conninfo = self.conninfo  # type: ignore[attr-defined]
        keep_raising = (MemoryError, *conninfo.connection_errors, *conninfo.channel_errors)

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except keep_raising:
                raise
            except Exception as exc:  # a message Celery cannot turn into a request
                if self._dead_letter(message, exc):
                    message.ack()
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if self._dead_letter(message, exc):
            super().on_decode_error(message, exc)  # logs CRITICAL, then acks

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if self._dead_letter(message, ValueError("no task header and not a protocol-1 body")):
            super().on_unknown_message(body, message)  # warns, then rejects (drops)

    def _dead_letter(self, message: Any, exc: Exception) -> bool:
        """Record the message durably; False (the message stays unacked) if that failed."""
        try:
            capture_failure(self._record(message, exc))
        except Exception:
            logger.critical("could not record malformed message; left unacked", exc_info=True)
            return False
        return True

    def _record(self, message: Any, exc: Exception) -> FailureRecord:
        from kombu.serialization import prepare_accept_content

        accept = prepare_accept_content(self.app.conf.accept_content or ()) or set()
        try:
            record = record_from_message(
                message, reason=MALFORMED, exc=exc, accept=accept, hostname=self.hostname or ""
            )
        except Exception:  # headers or properties as broken as the body
            record = _bare_record(message, exc)
        record.options["message_headers"] = jsonable(_headers(message))
        record.options.setdefault("raw_body", _raw_body(message))
        return record


def _headers(message: Any) -> Any:
    headers = getattr(message, "headers", None)
    return headers if isinstance(headers, dict) else {"__repr__": repr(headers)}


def _raw_body(message: Any) -> str:
    body = message.body
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "backslashreplace")
    return base64.b64encode(raw).decode("ascii")


def _bare_record(message: Any, exc: Exception) -> FailureRecord:
    properties = getattr(message, "properties", None) or {}
    return FailureRecord(
        task_id=str(properties.get("correlation_id") or "(no id)"),
        task_name="(unknown)",
        reason=MALFORMED,
        exception_class=f"{type(exc).__module__}.{type(exc).__qualname__}",
        exception_message=str(exc),
    )
