"""``OpsTask``: a Celery task base class with safe defaults and dead-letter capture."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from traceback import format_exception
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

from djcelery_ops.conf import ops_settings
from djcelery_ops.exceptions import PermanentError, TransientError
from djcelery_ops.idempotency.keys import header_key
from djcelery_ops.logs import log_event

task_logger = get_task_logger(__name__)


def _from_setting(name: str) -> Any:
    """A default read from ``DJCELERY_OPS_<name>`` at each access.

    A task that sets the option itself (``@ops_task(acks_late=False)`` or a class
    attribute) shadows this property in its own class.
    """
    return property(lambda task: getattr(ops_settings, name))


def _soft_below_hard(task: Any) -> Any:
    """``DJCELERY_OPS_TASK_SOFT_TIME_LIMIT``, or below a task's own shorter hard limit
    (Celery refuses a soft limit above the hard one): 10% earlier, at most 30 s."""
    soft = ops_settings.TASK_SOFT_TIME_LIMIT
    hard = task.time_limit
    if soft is not None and hard is not None and soft >= hard:
        return max(hard * 0.9, hard - 30)
    return soft


class OpsTask(Task):  # type: ignore[type-arg]
    """Base class: late acks, time limits, classified retries, every final failure kept.

    - ``retry_for``: exceptions retried with exponential backoff, jitter and a cap
      (default: ``TransientError``, ``ConnectionError``, ``TimeoutError``).
    - ``dead_letter_for``: exceptions dead-lettered at once, never retried
      (default: ``PermanentError``).
    - Anything else fails without retry and is dead-lettered with reason ``exception``:
      retrying an unknown error may repeat a side effect.
    """

    Request = "djcelery_ops.task.request:OpsRequest"

    acks_late = _from_setting("TASK_ACKS_LATE")
    reject_on_worker_lost = _from_setting("TASK_REJECT_ON_WORKER_LOST")
    soft_time_limit: Any = property(_soft_below_hard)
    time_limit = _from_setting("TASK_TIME_LIMIT")
    max_retries = _from_setting("TASK_MAX_RETRIES")
    retry_backoff = _from_setting("TASK_RETRY_BACKOFF")
    retry_backoff_max = _from_setting("TASK_RETRY_BACKOFF_MAX")
    retry_jitter = _from_setting("TASK_RETRY_JITTER")
    # A failure or a hard time limit is final: ack it, dead-letter it, do not loop.
    # The job-run part records runs of tasks that set this (``DJCELERY_OPS_RUNS_ALL_TASKS``
    # covers the others); dead-letter capture leaves tasks that record their own failures.
    record_runs = True
    captures_own_failures = True
    acks_on_failure = True
    acks_on_timeout = True
    retry_on_worker_lost = False

    retry_for: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)
    dead_letter_for: tuple[type[BaseException], ...] = (PermanentError,)

    # Execution-time idempotency and enqueue-time uniqueness: docs/idempotency.md.
    idempotency_key: str | Callable[..., Any] | None = None
    idempotency_mode = _from_setting("IDEMPOTENCY_DEFAULT_MODE")
    unique_for: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._run_call(args, kwargs)
        except (Retry, Reject, Ignore):
            raise  # published again, decided in the main process, or not a failure
        except Exception as exc:
            self._capture_final_failure(exc, args, kwargs)
            raise

    def _run_call(self, args: Any, kwargs: Any) -> Any:
        plain = self.unique_for is None and self.idempotency_key is None
        if plain and not header_key(self.request):
            return super().__call__(*args, **kwargs)
        from djcelery_ops.idempotency.execution import run_idempotently

        return run_idempotently(
            self, args, kwargs, lambda: super(OpsTask, self).__call__(*args, **kwargs)
        )

    def apply_async(  # type: ignore[override]  # options by keyword only
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        if self.unique_for is None:
            return super().apply_async(args, kwargs, **options)
        from djcelery_ops.idempotency.unique import apply_async_unique

        publish = super().apply_async
        return apply_async_unique(
            self, args, kwargs, options, lambda **o: publish(args, kwargs, **o)
        )

    # Celery's own autoretry wrapper (celery.app.autoretry) reads these when the task is
    # registered; they follow retry_for / dead_letter_for.
    @property
    def autoretry_for(self) -> tuple[type[BaseException], ...]:
        return self.retry_for

    @property
    def dont_autoretry_for(self) -> tuple[type[BaseException], ...]:
        return self.dead_letter_for

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        max_retries = kwargs.get("max_retries", self.max_retries)
        if max_retries is not None and self.request.retries >= max_retries:
            # Celery re-raises the original exception: remember why it is final.
            self.request.djcelery_ops_retries_exhausted = True  # type: ignore[attr-defined]
        return super().retry(*args, **kwargs)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.request.djcelery_ops_started = time.monotonic()  # type: ignore[attr-defined]
        log_event("task.started", level=logging.DEBUG, **self._log_fields(task_id))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        log_event("task.succeeded", **self._log_fields(task_id))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        fields = self._log_fields(task_id, exception_class=type(exc).__name__)
        log_event("task.retry", level=logging.WARNING, **fields)

    def _capture_final_failure(self, exc: BaseException, args: Any, kwargs: Any) -> None:
        """Keep the failure before Celery's trace handles it (issue 12, item 1).

        The trace stores the result (``backend.mark_as_failure``) before it calls
        ``on_failure``: with a database result backend and the database down, that raises
        and ``on_failure`` never runs, and the message is acked all the same. Capturing
        here, in the child and before the trace returns, makes the record durable (a row
        or a fsynced spool file) before the message can be acknowledged.
        """
        request = self.request
        if request.called_directly or request.is_eager:
            return  # no message to lose: eager failures go through on_failure as before
        task_id = str(request.id or "")
        fields = self._log_fields(task_id, exception_class=type(exc).__name__)
        log_event("task.failed", level=logging.ERROR, **fields)
        text = "".join(format_exception(type(exc), exc, exc.__traceback__))
        self._capture(exc, task_id, args, kwargs, text)
        request.djcelery_ops_captured = True  # type: ignore[attr-defined]

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if self.request.id != task_id:
            # Celery calls this from the worker's main process for a hard time limit, with
            # an empty request; OpsRequest records that failure with the full request.
            return
        if getattr(self.request, "djcelery_ops_captured", False):
            return  # kept by __call__ already
        fields = self._log_fields(task_id, exception_class=type(exc).__name__)
        log_event("task.failed", level=logging.ERROR, **fields)
        self._capture(exc, task_id, args, kwargs, getattr(einfo, "traceback", "") or "")

    def _capture(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, traceback: str
    ) -> None:
        from djcelery_ops.deadletter.capture import capture_failure
        from djcelery_ops.deadletter.record import record_from_request

        record = record_from_request(
            {**vars(self.request), "id": task_id},
            task_name=self.name,
            reason=self.failure_reason(exc),
            exc=exc,
            traceback=traceback,
            args=args,
            kwargs=kwargs,
        )
        capture_failure(record)

    def failure_reason(self, exc: BaseException) -> str:
        """Why this failure is final, as a ``DeadLetter.Reason`` value."""
        from djcelery_ops.deadletter.models import DeadLetter
        from djcelery_ops.idempotency.execution import IdempotencyKeyBusy

        if isinstance(exc, IdempotencyKeyBusy):
            return DeadLetter.Reason.IDEMPOTENCY_KEY_BUSY
        if getattr(self.request, "djcelery_ops_retries_exhausted", False):
            return DeadLetter.Reason.RETRIES_EXHAUSTED
        if isinstance(exc, self.dead_letter_for):
            return DeadLetter.Reason.PERMANENT_ERROR
        if isinstance(exc, SoftTimeLimitExceeded):
            return DeadLetter.Reason.SOFT_TIME_LIMIT
        return DeadLetter.Reason.EXCEPTION

    def _log_fields(self, task_id: str, **extra: Any) -> dict[str, Any]:
        request = self.request
        started = getattr(request, "djcelery_ops_started", None)
        delivery = request.delivery_info or {}
        return {
            "task_id": task_id,
            "task_name": self.name,
            "retries": request.retries,
            "queue": getattr(request, "djcelery_ops_queue", None) or delivery.get("routing_key"),
            "duration": None if started is None else round(time.monotonic() - started, 6),
            **extra,
        }


def ops_task(*args: Any, **options: Any) -> Any:
    """Like ``shared_task``, with ``base=OpsTask``: ``@ops_task`` or ``@ops_task(...)``."""
    options.setdefault("base", OpsTask)
    return shared_task(*args, **options)
