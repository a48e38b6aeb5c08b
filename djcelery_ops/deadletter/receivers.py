"""Celery signal receivers of the dead-letter part: the failures no task hook sees.

``connect()`` is called from ``AppConfig.ready()``; every receiver has a ``dispatch_uid``,
so calling it again connects nothing twice. ``OpsTask`` records its own failures
(``on_failure`` in the child, ``OpsRequest`` in the worker's main process); these receivers
catch the rest: failures of plain Celery tasks, messages for unknown tasks, messages the
worker refused, and the outcome of replayed tasks.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.capture import (
    capture_failure,
    drain_spool_quietly,
    spool_ingestion_timer,
)
from djcelery_ops.deadletter.lineage import record_replay_success
from djcelery_ops.deadletter.record import record_from_message, record_from_request
from djcelery_ops.wire import REPLAY_HEADER


def connect() -> None:
    signals.task_failure.connect(capture_plain_task_failure, dispatch_uid="djops.task_failure")
    signals.task_unknown.connect(capture_unknown_task, dispatch_uid="djops.task_unknown")
    signals.task_rejected.connect(capture_rejected_message, dispatch_uid="djops.task_rejected")
    signals.worker_ready.connect(ingest_spool_at_start, dispatch_uid="djops.spool_at_start")
    signals.worker_shutdown.connect(stop_spool_timer, dispatch_uid="djops.spool_timer_stop")
    signals.task_success.connect(resolve_replayed_task, dispatch_uid="djops.replay_success")


def capture_plain_task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **extra: Any,
) -> None:
    """Backstop for tasks that are not OpsTask (OpsTask records its own failures)."""
    from celery.exceptions import TimeLimitExceeded, WorkerLostError

    if getattr(sender, "captures_own_failures", False):
        return  # OpsTask records its own failures, with the reason it knows
    if not ops_settings.DEAD_LETTER_CAPTURE_ALL_TASKS:
        return
    request = dict(vars(sender.request)) if sender is not None else {}
    request["id"] = task_id
    reason = "exception"
    if isinstance(exception, TimeLimitExceeded):
        reason = "hard_time_limit"
    elif isinstance(exception, WorkerLostError):
        reason = "worker_lost"
    record = record_from_request(
        request,
        task_name=getattr(sender, "name", "") or "",
        reason=reason,
        exc=exception,
        traceback=getattr(einfo, "traceback", "") or "",
        args=args,
        kwargs=kwargs,
    )
    capture_failure(record)


def _capture_message(sender: Any, message: Any, exc: Any, reason: str) -> None:
    from kombu.serialization import prepare_accept_content

    app = sender.app
    record = record_from_message(
        message,
        reason=reason,
        exc=exc,
        accept=prepare_accept_content(app.conf.accept_content or ()) or set(),
        hostname=getattr(sender, "hostname", "") or "",
    )
    capture_failure(record)


def capture_unknown_task(
    sender: Any = None, message: Any = None, exc: Any = None, **kwargs: Any
) -> None:
    """A message for a task this worker does not know: Celery drops it after this."""
    _capture_message(sender, message, exc, "unregistered")


def capture_rejected_message(
    sender: Any = None, message: Any = None, exc: Any = None, **kwargs: Any
) -> None:
    """A message the worker could not accept (disallowed content type, invalid task)."""
    _capture_message(sender, message, exc, "rejected_message")


def resolve_replayed_task(sender: Any = None, **kwargs: Any) -> None:
    """A replayed task succeeded: resolve its dead letter. Other tasks return at once."""
    request = getattr(sender, "request", None)
    if request is None:
        return
    headers = getattr(request, "headers", None) or {}
    if getattr(request, REPLAY_HEADER, None) is None and REPLAY_HEADER not in headers:
        return
    record_replay_success(request)


def ingest_spool_at_start(**kwargs: Any) -> None:
    """Ingest what an earlier run left, then keep ingesting on a timer (main process)."""
    drain_spool_quietly()
    spool_ingestion_timer.start()


def stop_spool_timer(**kwargs: Any) -> None:
    spool_ingestion_timer.stop()
