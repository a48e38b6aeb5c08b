"""``OpsRequest``: sees the outcomes the worker's main process handles.

A child killed under a task (``WorkerLostError``), a hard time limit and a task rejecting
its own message are decided in the worker's main process, not in the child where
``Task.on_failure`` runs with the request. This Request class, named by
``OpsTask.Request``, records them with the full request.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from celery import Task
from celery.exceptions import Reject, WorkerLostError
from celery.worker.request import Request
from celery.worker.state import task_ready
from django.db import DatabaseError, InterfaceError

from djcelery_ops.conf import ops_settings

logger = logging.getLogger("djcelery_ops.deadletter")

# Celery 5.7 split ``acks_on_failure_or_timeout`` into ``acks_on_failure`` and
# ``acks_on_timeout`` (each falling back to it); older versions read only the first.
CELERY_SPLITS_ACKS_ON_TIMEOUT = hasattr(Task, "acks_on_timeout")


def requeues_on_timeout(task: Any) -> bool:
    """True when Celery requeues the message of a task that hit its hard time limit.

    The same attributes Celery's ``Request.on_timeout`` reads: such a message runs again,
    so it is not a final failure and must not be dead-lettered.
    """
    if not task.acks_late:
        return False
    if CELERY_SPLITS_ACKS_ON_TIMEOUT:
        return not task.acks_on_timeout
    return not task.acks_on_failure_or_timeout


class OpsRequest(Request):
    _djcelery_ops_recorded = False

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        # The child keeps a failed call encoded as delivered (deadletter.call): tell it how.
        self._request_dict["content_type"] = self._content_type  # type: ignore[attr-defined]

    # Every record below is made BEFORE Celery's handler runs: that handler acknowledges
    # the message and stores the result, and the result backend may be the database that
    # is down (it raises, after or instead of the ack). The record must be durable first.

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft and not requeues_on_timeout(self.task):
            self._record("hard_time_limit", None, f"Hard time limit ({timeout}s) exceeded")
        super().on_timeout(soft, timeout)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        lost = isinstance(exc, WorkerLostError) or (
            isinstance(exc, SystemExit | KeyboardInterrupt)
            and not (self._already_cancelled or self._already_revoked)  # type: ignore[attr-defined]
        )
        requeues = lost and self.task.acks_late and self.task.reject_on_worker_lost
        if requeues and self._poisoned():
            return self._dead_letter_poison(exc_info)
        if lost and not requeues:
            self._record("worker_lost", exc, exc_info.traceback)
        elif isinstance(exc, Reject) and not exc.requeue:  # type: ignore[attr-defined]
            self._record("rejected_by_task", exc, exc_info.traceback)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def _poisoned(self) -> bool:
        """Count this delivery; True once the message killed its child too many times."""
        from djcelery_ops.deadletter.deliveries import count_delivery

        try:
            deliveries = count_delivery(self.id)
        except (DatabaseError, InterfaceError):
            logger.warning("could not count deliveries of %s; requeued", self.id)
            return False
        return deliveries >= ops_settings.DEAD_LETTER_MAX_DELIVERIES

    def _dead_letter_poison(self, exc_info: Any) -> None:
        task_ready(self)
        self._record("too_many_deliveries", exc_info.exception, exc_info.traceback)
        self.task.backend.mark_as_failure(
            self.id,
            exc_info.exception,
            request=self._context,  # type: ignore[attr-defined]
            store_result=self.store_errors,
        )
        self.acknowledge()

    def _record(self, reason: str, exc: BaseException | None, traceback: str) -> None:
        if self._djcelery_ops_recorded or not getattr(self.task, "dead_letter_failures", True):
            return
        self._djcelery_ops_recorded = True
        from djcelery_ops.deadletter.capture import capture_failure
        from djcelery_ops.deadletter.record import record_from_request

        if exc is None:
            from celery.exceptions import TimeLimitExceeded

            exc = TimeLimitExceeded(traceback)
        record = record_from_request(
            {**self.request_dict, "hostname": self.hostname},
            task_name=self.task_name,
            reason=reason,
            exc=exc,
            traceback=traceback or "",
            args=self.args,
            kwargs=self.kwargs,
        )
        capture_failure(record)
