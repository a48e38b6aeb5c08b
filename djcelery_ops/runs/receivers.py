"""Celery signal receivers that turn a task's lifecycle into job-run events.

They record only inside a worker (``worker_init`` in the main process,
``worker_process_init`` in pool children): eager calls in web processes and tests are not
runs. Each receiver does a little dict work and hands the event to the batched recorder.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from celery import signals
from celery.worker import state as worker_state
from django.conf import settings
from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.runs.merge import Event
from djcelery_ops.runs.models import ATTEMPT_STRIDE, TaskRun
from djcelery_ops.runs.recorder import recorder
from djcelery_ops.signals import dead_lettered
from djcelery_ops.storable import bounded_message
from djcelery_ops.wire import (
    PERIODIC_TASK_NAME_HEADER,
    QUEUE_HEADER,
    RECEIVED_AT_KEY,
    call_digest,
    describe_exception,
    jsonable,
)

logger = logging.getLogger("djcelery_ops.runs")
State = TaskRun.State
_active = False
_started: dict[str, tuple[float, int]] = {}  # task id: (monotonic start, retries)


def connect() -> None:
    """Connect the receivers; each checks ``DJCELERY_OPS_RUNS_ENABLED`` when it fires."""
    for name, receiver in (
        ("worker_init", activate),
        ("worker_process_init", activate),
        ("worker_process_shutdown", flush_at_shutdown),
        ("worker_shutdown", flush_at_shutdown),
        ("task_received", on_task_received),
        ("task_prerun", on_task_prerun),
        ("task_postrun", on_task_postrun),
        ("task_retry", on_task_retry),
        ("task_failure", on_task_failure),
        ("task_revoked", on_task_revoked),
    ):
        getattr(signals, name).connect(receiver, dispatch_uid=f"djops.runs.{name}")
    dead_lettered.connect(record_dead_letter, dispatch_uid="djops.runs.dead_lettered")


def activate(**kwargs: Any) -> None:
    """Receiver of ``worker_init`` / ``worker_process_init``: this process is a worker."""
    global _active
    _active = True


def flush_at_shutdown(**kwargs: Any) -> None:
    """Receiver of ``worker_process_shutdown`` / ``worker_shutdown``."""
    recorder.close()


def _records(task: Any) -> bool:
    if not (_active and ops_settings.RUNS_ENABLED):
        return False
    # OpsTask sets ``record_runs = True``; a task may set it too, either way.
    return bool(getattr(task, "record_runs", ops_settings.RUNS_ALL_TASKS))


def _event(task_id: str, state: str, retries: int, **columns: Any) -> Event:
    rank = TaskRun.RANKS[State(state)]
    if "exception_message" in columns:  # capped and storable like a dead letter's (NUL)
        columns["exception_message"] = bounded_message(columns["exception_message"])
    return {
        "task_id": task_id,
        "state": state,
        "retries": retries,
        "progress": retries * ATTEMPT_STRIDE + rank,
        **columns,
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _routing(task_id: str, request: Mapping[str, Any], delivery: Any = None) -> dict[str, str]:
    """Columns every event can fill from a request dict (headers merged in).

    ``root_id`` stays blank for a task that is its own root (Celery sets it to the task's
    own id), so the root and parent indexes, partial on non-blank values, hold only the
    tasks of canvases and tasks sent from tasks."""
    root_id = request.get("root_id")
    headers = request.get("headers")
    tenant = request.get(ops_settings.RUNS_TENANT_HEADER)
    if tenant is None and isinstance(headers, Mapping):
        tenant = headers.get(ops_settings.RUNS_TENANT_HEADER)
    delivery = delivery or request.get("delivery_info") or {}
    return {
        "queue": _text(request.get(QUEUE_HEADER) or delivery.get("routing_key")),
        "root_id": "" if root_id == task_id else _text(root_id),
        "parent_id": _text(request.get("parent_id")),
        "periodic_task_name": _text(request.get(PERIODIC_TASK_NAME_HEADER)),
        "tenant": _text(tenant),
    }


def _moment(epoch: float) -> datetime.datetime:
    """An epoch time as ``timezone.now()`` would have returned it then."""
    if settings.USE_TZ:
        return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return datetime.datetime.fromtimestamp(epoch)


def still_waiting(task_id: str) -> bool:
    """Worker main process: the request is known and no pool process has accepted it yet
    (prefetched behind busy processes, or waiting for its ETA)."""
    request = worker_state.requests.get(task_id)
    return request is not None and request not in worker_state.active_requests


def on_task_received(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    """Worker main process: a message became a request (before any prefetch wait).

    The receipt time rides in the request dict to the process that runs the task, which
    writes the row; the receipt itself is written only for a task still waiting a flush
    interval later, so a task that starts at once costs one row insert, not two writes.
    """
    if request is None or not _records(request.task):
        return
    headers = request.request_dict
    received = time.time()
    headers[RECEIVED_AT_KEY] = received  # epoch seconds; travels to the child
    event = _event(
        request.id,
        State.RECEIVED,
        int(headers.get("retries") or 0),
        task_name=request.task_name,
        worker_hostname=_text(request.hostname),
        received_at=_moment(received),
        **_routing(request.id, headers, request.delivery_info),
    )
    recorder.hold(event, still_waiting)


def on_task_prerun(
    sender: Any = None, task_id: str = "", args: Any = None, kwargs: Any = None, **extra: Any
) -> None:
    if not _records(sender):
        return
    context = sender.request
    if context.is_eager:
        return
    request = vars(context)
    now = timezone.now()
    received = request.get(RECEIVED_AT_KEY)
    retries = int(request.get("retries") or 0)
    columns: dict[str, Any] = {"args_digest": call_digest(args, kwargs)}
    if ops_settings.RUNS_STORE_ARGS:
        columns.update(args=jsonable(args), kwargs=jsonable(kwargs))
    _started[task_id] = (time.monotonic(), retries)
    recorder.add(
        _event(
            task_id,
            State.STARTED,
            retries,
            task_name=sender.name,
            worker_hostname=_text(request.get("hostname")),
            started_at=now,
            received_at=now if received is None else _moment(received),
            **_routing(task_id, request),
            **columns,
        )
    )


POSTRUN_STATES = {"SUCCESS": State.SUCCEEDED, "FAILURE": State.FAILED, "RETRY": State.RETRY}


def on_task_postrun(
    sender: Any = None, task_id: str = "", state: str | None = None, **extra: Any
) -> None:
    """The attempt ended; ``on_task_prerun`` decided whether it is recorded."""
    started = _started.pop(task_id, None)
    if started is None:  # not recorded: eager, not an OpsTask, or recording off
        return
    began, retries = started
    run_state = POSTRUN_STATES.get(state or "", State.FAILED)
    columns: dict[str, Any] = {"runtime": time.monotonic() - began}
    if run_state != State.RETRY:
        columns["finished_at"] = timezone.now()
    recorder.add(_event(task_id, run_state, retries, **columns))


def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **kw: Any) -> None:
    if request is None or not _records(sender) or request.is_eager:
        return
    # Celery's Retry wraps the error that caused it, when there is one.
    exc = getattr(reason, "exc", None) or reason
    exception_class, message = describe_exception(exc if isinstance(exc, BaseException) else None)
    if not exception_class:
        message = _text(reason)
    recorder.add(
        _event(
            request.id,
            State.RETRY,
            int(request.retries or 0),
            exception_class=exception_class,
            exception_message=message,
        )
    )


def on_task_failure(
    sender: Any = None, task_id: str = "", exception: BaseException | None = None, **kw: Any
) -> None:
    if not _records(sender):
        return
    request = getattr(sender, "request", None)
    if request is not None and request.id == task_id and request.is_eager:
        return
    exception_class, message = describe_exception(exception)
    retries = int(getattr(request, "retries", 0) or 0) if request is not None else 0
    recorder.add(
        _event(
            task_id,
            State.FAILED,
            retries,
            task_name=_text(getattr(sender, "name", "")),
            exception_class=exception_class,
            exception_message=message,
            finished_at=timezone.now(),
        )
    )


def on_task_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **kw: Any,
) -> None:
    """Worker main process: revoked by id or header, expired, or terminated."""
    if request is None or not _records(sender):
        return
    if expired:
        why = "expired"
    elif terminated:
        why = f"terminated by signal {signum}"
    else:
        why = "revoked"
    recorder.add(
        _event(
            _text(request.id),
            State.REVOKED,
            int(getattr(request, "retries", 0) or 0),
            task_name=_text(getattr(sender, "name", "")),
            exception_message=why,
            finished_at=timezone.now(),
            **_routing(_text(request.id), vars(request)),
        )
    )


def record_dead_letter(sender: Any = None, record: Any = None, **kwargs: Any) -> None:
    """Receiver of ``dead_lettered``: this run's final state is ``dead_lettered``.

    The dead letter itself was stored synchronously; only the run's state is batched.
    Never raises: the dead letter is what matters.
    """
    try:
        _record_dead_letter(record)
    except Exception:
        logger.exception("could not mark the job run of %s dead-lettered", record.task_id)


def _record_dead_letter(record: Any) -> None:
    from celery import current_app

    task = current_app.tasks.get(record.task_name)
    if not (_records(task) or (task is None and _active and ops_settings.RUNS_ALL_TASKS)):
        return
    recorder.add(
        _event(
            record.task_id,
            State.DEAD_LETTERED,
            int(record.retries or 0),
            task_name=record.task_name,
            exception_class=record.exception_class,
            exception_message=record.exception_message,
            finished_at=timezone.now(),
            queue=record.queue,
            worker_hostname=record.worker_hostname,
        )
    )
