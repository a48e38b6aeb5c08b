"""The app's own Celery tasks, found by ``app.autodiscover_tasks()``.

``run_bulk_action`` carries out a ``BulkAction`` (a whole-group replay or discard the
admin handed over) one slice at a time; ``deadletter.bulk`` says how.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval

from djcelery_ops.deadletter import bulk
from djcelery_ops.deadletter.outbox import ReplayError
from djcelery_ops.task.base import OpsTask


@shared_task(name=bulk.TASK_NAME, bind=True, base=OpsTask)
def run_bulk_action(self: Any, pk: int) -> str:
    """One slice of the action; then the next one as a new message, if work is left.

    When the broker refuses a batch's messages (they wait in the outbox, the slice's next
    start publishes them) the slice starts again here, after OpsTask's backoff, up to
    ``max_retries`` times: a Celery retry would need the broker that just failed to send
    the retry, and this message, still unacknowledged, is what keeps the action going.
    The last failure fails the action (resume it from the admin).
    """
    task_id = self.request.id
    attempt = 0
    while True:
        try:
            result = bulk.run(pk, task_id, app=self.app)
            break
        except ReplayError as error:
            final = self.max_retries is not None and attempt >= self.max_retries
            bulk.note_error(pk, task_id, str(error), final=final)
            if final:
                raise
            time.sleep(
                get_exponential_backoff_interval(
                    factor=self.retry_backoff,
                    retries=attempt,
                    maximum=self.retry_backoff_max,
                    full_jitter=self.retry_jitter,
                )  # fmt: skip
            )
            attempt += 1
    if result == bulk.MORE:
        bulk.hand_on(pk, task_id, app=self.app)
    return result
