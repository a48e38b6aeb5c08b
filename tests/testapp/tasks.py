"""Tasks the test suite sends to real worker processes."""

import os
import signal
import time
from pathlib import Path

from celery import shared_task
from celery.exceptions import Reject

from djcelery_ops import PermanentError, TransientError, ops_task

from .models import Effect, ScheduleSlotRun


@shared_task(bind=True)
def record_effect(self, key: str) -> int:
    effect = Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    return effect.pk


# --- OpsTask tasks: one per way a task can fail for good -------------------------------------


@ops_task
def ops_add(x: int, y: int) -> int:
    return x + y


@ops_task
def ops_raise(message: str, **kwargs) -> None:
    raise ValueError(message)


@ops_task
def ops_permanent(order_id: int) -> None:
    raise PermanentError(f"order {order_id} does not exist")


@ops_task(max_retries=2, retry_backoff=1, retry_backoff_max=1)
def ops_always_transient(key: str) -> None:
    Effect.objects.create(key=key)
    raise TransientError("upstream answered 503")


@ops_task(bind=True, max_retries=3, retry_backoff=1, retry_backoff_max=1)
def ops_transient_once(self, key: str) -> str:
    Effect.objects.create(key=key, task_id=self.request.id)
    if self.request.retries == 0:
        raise TransientError("first attempt times out")
    return "ok"


@ops_task(bind=True)
def ops_manual_retry(self, key: str) -> None:
    Effect.objects.create(key=key)
    raise self.retry(exc=LookupError("still missing"), countdown=0, max_retries=1)


@ops_task(soft_time_limit=0.5, time_limit=10)
def ops_soft_limit() -> None:
    time.sleep(5)


@ops_task(soft_time_limit=None, time_limit=1)
def ops_hard_limit() -> None:
    for _ in range(100):
        time.sleep(0.1)


@ops_task(reject_on_worker_lost=False)
def ops_kill_child() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@ops_task(bind=True)
def ops_poison(self, key: str) -> None:
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


@ops_task
def ops_reject() -> None:
    raise Reject("cannot handle this message", requeue=False)


@ops_task(bind=True)
def ops_fail_when(self, key: str, go_file: str) -> None:
    """Start (an effect row), wait for the test to say go, then fail."""
    Effect.objects.create(key=key, task_id=self.request.id)
    deadline = time.monotonic() + 60
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    raise ValueError(f"failed after go for {key}")


@shared_task
def plain_raise(message: str) -> None:
    raise KeyError(message)


# --- Job runs: tasks that stop in each lifecycle state ---------------------------------------


@ops_task
def ops_wait_for(go_file: str) -> str:
    """Stays started until the test creates ``go_file``."""
    deadline = time.monotonic() + 60
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "done"


@ops_task(bind=True)
def ops_retry_elsewhere(self, queue: str) -> None:
    """Retries onto a queue no worker consumes, so the run stays in state retry."""
    raise self.retry(exc=TransientError("try later"), queue=queue, countdown=0)


@ops_task(bind=True)
def ops_spawn_child(self) -> str:
    return ops_add.delay(2, 3).id


from djcelery_ops.task.base import OpsTask  # noqa: E402 - this section is appended


class NoDeadLetterTask(OpsTask):
    """An OpsTask whose failures are not dead-lettered: its runs end as failed."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        return None


@ops_task(base=NoDeadLetterTask)
def ops_fail_without_dead_letter(message: str) -> None:
    raise ValueError(message)


@shared_task
def plain_add(x: int, y: int) -> int:
    return x + y


# --- Periodic jobs: what beat dispatched, per schedule slot ----------------------------------


@shared_task(bind=True)
def record_schedule_slot(self, label: str = "") -> int:
    """Record the schedule-slot header beat put on this run; tests count runs per slot."""
    run = ScheduleSlotRun.objects.create(
        slot_key=self.request.get("djcelery_ops_schedule_slot") or "",
        periodic_task_name=self.request.get("periodic_task_name") or "",
        label=label,
        task_id=self.request.id,
    )
    return run.pk
