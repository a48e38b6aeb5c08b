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

from djcelery_ops.conf import UNSET, ops_settings
from djcelery_ops.exceptions import PermanentError, TransientError
from djcelery_ops.idempotency.keys import delivery_key, header_key
from djcelery_ops.logs import log_enabled, log_event
from djcelery_ops.wire import describe_exception

task_logger = get_task_logger(__name__)


# Celery applies its configuration (``Task.from_config``) only to options that are None on
# the task class. OpsTask's options are ``OpsDefault`` descriptors, never None, so OpsTask
# records the values the project gave these settings itself when Celery binds a task.
CELERY_CONFIG_KEYS: dict[str, str] = {
    "acks_late": "task_acks_late",
    "reject_on_worker_lost": "task_reject_on_worker_lost",
    "time_limit": "task_time_limit",
    "soft_time_limit": "task_soft_time_limit",
    "acks_on_failure_or_timeout": "task_acks_on_failure_or_timeout",
    # Celery >= 5.7 only; an older Celery has no such setting and never reports it set.
    "acks_on_failure": "task_acks_on_failure",
    "acks_on_timeout": "task_acks_on_timeout",
}
_CELERY_VALUES = "_djcelery_ops_celery_values"


def celery_values(conf: Any) -> dict[str, Any]:
    """The task options the project set in its Celery configuration (defaults excluded:
    Celery's own defaults, such as ``acks_late=False``, must not beat OpsTask's)."""
    return {
        option: conf[key] for option, key in CELERY_CONFIG_KEYS.items() if conf.value_set_for(key)
    }


class OpsDefault:
    """An OpsTask option the task does not set itself, resolved at each access.

    Precedence: ``DJCELERY_OPS_<setting>`` if the project sets it, then the project's
    Celery setting, then ``default`` (a value, a callable of the task, or ``UNSET`` for
    the documented default of ``<setting>``). A task's own option (decorator keyword or
    class attribute) shadows the descriptor in its class. Read on the class, the
    descriptor is itself, which is not None, so Celery's ``bind`` leaves the option to it.
    """

    def __init__(self, setting: str | None, default: Any = UNSET) -> None:
        self.setting = setting
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, task: OpsTask | None, owner: type | None = None) -> Any:
        if task is None:
            return self
        return self.resolve(task)

    def resolve(self, task: OpsTask) -> Any:
        if self.setting is not None:
            value = ops_settings.project_value(self.setting)
            if value is not UNSET:
                return value
        values = task.celery_values()
        if self.name in values:
            return values[self.name]
        if self.default is UNSET:
            assert self.setting is not None
            return getattr(ops_settings, self.setting)
        return self.default(task) if callable(self.default) else self.default


class SoftTimeLimitDefault(OpsDefault):
    """Below a task's shorter hard limit (Celery refuses a soft limit above the hard one):
    10% earlier, at most 30 s."""

    def resolve(self, task: OpsTask) -> Any:
        soft = super().resolve(task)
        hard = task.time_limit
        if soft is not None and hard is not None and soft >= hard:
            return max(hard * 0.9, hard - 30)
        return soft


def _acks_on_failure_or_timeout(task: OpsTask) -> Any:
    # Celery >= 5.7 falls back the same way for options left None.
    return task.acks_on_failure_or_timeout


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

    acks_late: Any = OpsDefault("TASK_ACKS_LATE")
    reject_on_worker_lost: Any = OpsDefault("TASK_REJECT_ON_WORKER_LOST")
    soft_time_limit: Any = SoftTimeLimitDefault("TASK_SOFT_TIME_LIMIT")
    time_limit: Any = OpsDefault("TASK_TIME_LIMIT")
    # No Celery setting exists for these four: the task, DJCELERY_OPS_*, the default.
    max_retries: Any = OpsDefault("TASK_MAX_RETRIES")
    retry_backoff: Any = OpsDefault("TASK_RETRY_BACKOFF")
    retry_backoff_max: Any = OpsDefault("TASK_RETRY_BACKOFF_MAX")
    retry_jitter: Any = OpsDefault("TASK_RETRY_JITTER")
    # A failure or a hard time limit is final: ack it, dead-letter it, do not loop. Celery's
    # option (and its task_acks_on_failure_or_timeout setting); on Celery >= 5.7 the finer
    # acks_on_failure / acks_on_timeout follow it unless the task or the project set them.
    acks_on_failure_or_timeout: Any = OpsDefault(None, True)
    acks_on_failure: Any = OpsDefault(None, _acks_on_failure_or_timeout)
    acks_on_timeout: Any = OpsDefault(None, _acks_on_failure_or_timeout)
    # The job-run part records runs of tasks that set this (``DJCELERY_OPS_RUNS_ALL_TASKS``
    # covers the others); dead-letter capture leaves tasks that record their own failures.
    record_runs = True
    captures_own_failures = True
    # False: this task's final failures are not dead letters (its runs end ``failed``);
    # for failures the project handles itself, e.g. in a ``link_error`` callback.
    dead_letter_failures = True
    retry_on_worker_lost = False

    retry_for: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)
    dead_letter_for: tuple[type[BaseException], ...] = (PermanentError,)

    # Execution-time idempotency and enqueue-time uniqueness: README.md, "Idempotency".
    idempotency_key: str | Callable[..., Any] | None = None
    idempotency_mode: Any = OpsDefault("IDEMPOTENCY_DEFAULT_MODE")
    unique_for: float | None = None

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery calls this at the end of ``bind``: keep the project's Celery settings."""
        setattr(cls, _CELERY_VALUES, celery_values(app.conf))

    def celery_values(self) -> dict[str, Any]:
        """The project's Celery settings of this task's app, read when it was bound."""
        cls = type(self)
        if _CELERY_VALUES not in cls.__dict__:
            # Not bound yet, or bound only through a parent class: bind to the task's app.
            cls.on_bound(self.app)
        values: dict[str, Any] = cls.__dict__[_CELERY_VALUES]
        return values

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
        if plain and not header_key(self.request) and not delivery_key(self.request):
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
        if log_enabled(logging.DEBUG):  # the fields cost more than the check (profile)
            log_event("task.started", level=logging.DEBUG, **self._log_fields(task_id))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if log_enabled(logging.INFO):
            log_event("task.succeeded", **self._log_fields(task_id))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        fields = self._log_fields(task_id, exception_class=describe_exception(exc)[0])
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
        self._capture(exc, task_id, args, kwargs, getattr(einfo, "traceback", "") or "")

    def _capture(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, traceback: str
    ) -> None:
        """Log ``task.failed`` and, unless the task opts out, keep the dead letter."""
        fields = self._log_fields(task_id, exception_class=describe_exception(exc)[0])
        log_event("task.failed", level=logging.ERROR, **fields)
        if not self.dead_letter_failures:
            return
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
        from djcelery_ops.idempotency.claim import CommitOutcomeUnknown
        from djcelery_ops.idempotency.execution import IdempotencyKeyBusy

        if isinstance(exc, IdempotencyKeyBusy):
            return DeadLetter.Reason.IDEMPOTENCY_KEY_BUSY
        if isinstance(exc, CommitOutcomeUnknown):
            return DeadLetter.Reason.COMMIT_UNKNOWN
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
