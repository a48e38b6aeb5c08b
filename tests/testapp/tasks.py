"""Tasks the test suite sends to real worker processes."""

import os
import signal
import time
from pathlib import Path

from celery import shared_task
from celery.exceptions import Reject
from django.db import DatabaseError

from djcelery_ops import PermanentError, TransientError, ops_task
from djcelery_ops.idempotency.execution import current_idempotency_key
from djcelery_ops.idempotency.keys import per_schedule_slot
from djcelery_ops.wire import SCHEDULE_SLOT_HEADER, request_header

from .models import Effect, ScheduleSlotRun


@shared_task(bind=True)
def record_effect(self, key: str) -> int:
    effect = Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    return effect.pk


@shared_task
def record_effect_or_give_up(key: str) -> str:
    """A task that handles a database error itself: it ends well, nothing is captured."""
    try:
        Effect.objects.create(key=key)
    except DatabaseError:
        return "gave up"
    return "recorded"


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


@ops_task(bind=True, soft_time_limit=None, time_limit=1, acks_on_failure_or_timeout=False)
def ops_hard_limit_requeued(self, key: str) -> None:
    """Celery requeues this one at its hard time limit instead of failing it."""
    Effect.objects.create(key=key, task_id=self.request.id)
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


@ops_task(bind=True)
def ops_sign_in(self, user: str, *, password: str, marker: str) -> None:
    """Refused (PermanentError) until ``marker`` exists; then records what it was given."""
    if not Path(marker).exists():
        raise PermanentError(f"sign-in refused for {user}")
    Effect.objects.create(key=f"signed-in:{user}:{password}", task_id=self.request.id)


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


@ops_task(dead_letter_failures=False)  # its runs end as failed, no dead letter
def ops_fail_without_dead_letter(message: str) -> None:
    raise ValueError(message)


@shared_task
def plain_add(x: int, y: int) -> int:
    return x + y


# --- Periodic jobs: what beat dispatched, per schedule slot ----------------------------------


@ops_task(bind=True, idempotency_key=per_schedule_slot)
def record_schedule_slot(self, label: str = "") -> int:
    """Record the schedule-slot header beat put on this run; tests count runs per slot.

    A slot dispatched again (a leader killed between publishing and saving last_run_at)
    carries the same key: the row is written once, in the key's transaction.
    """
    run = ScheduleSlotRun.objects.create(
        slot_key=request_header(self.request, SCHEDULE_SLOT_HEADER) or "",
        periodic_task_name=self.request.get("periodic_task_name") or "",
        label=label,
        task_id=self.request.id,
    )
    return run.pk


# --- Idempotency (djcelery_ops.idempotency) ---------------------------------------------------
# Effects are Effect rows, counted by the tests. In atomic mode they are written in the key's
# transaction; in lease mode they are committed at once, like a call to an external API.


def _kill_on_first_delivery(marker_dir: str, key: str) -> None:
    """SIGKILL this worker child the first time ``key`` runs (a file marks that it did)."""
    try:
        fd = os.open(Path(marker_dir) / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    # Work in progress. A child killed within milliseconds of starting can die before its
    # parent registered the job as accepted: billiard then reports a hard time limit
    # (acked, dead-lettered) instead of WorkerLostError (requeued).
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


@ops_task(bind=True, idempotency_key="effect:{key}")
def idem_atomic_effect(self, key: str, hold: float = 0.0) -> dict:
    Effect.objects.create(key=key, task_id=self.request.id or "", worker_pid=os.getpid())
    time.sleep(hold)  # work in progress: widens the window in which a duplicate arrives
    return {"key": key, "task_id": self.request.id}


@ops_task(
    bind=True,
    idempotency_key="effect:{key}",
    idempotency_mode="lease",
    soft_time_limit=None,
    time_limit=5,
)
def idem_lease_effect(self, key: str, hold: float = 0.0) -> dict:
    Effect.objects.create(key=key, task_id=current_idempotency_key(), worker_pid=os.getpid())
    time.sleep(hold)
    return {"key": key, "task_id": self.request.id}


@ops_task(bind=True, idempotency_key="kill:{key}", soft_time_limit=None, time_limit=20)
def idem_atomic_kill_once(self, key: str, marker_dir: str) -> str:
    # The effect is written, then the child dies: the rollback must take it back.
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    _kill_on_first_delivery(marker_dir, key)
    return key


@ops_task(
    bind=True,
    idempotency_key="kill:{key}",
    idempotency_mode="lease",
    soft_time_limit=None,
    # Not shorter: billiard may notice a dead child only after a short hard time limit
    # fired, and then reports the loss as TimeLimitExceeded (acked, not requeued).
    time_limit=10,
)
def idem_lease_kill_once(self, key: str, marker_dir: str) -> str:
    # The child dies holding the lease; the redelivery waits for the lease to expire.
    _kill_on_first_delivery(marker_dir, key)
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    return key


@ops_task(bind=True, idempotency_key="slow:{key}", soft_time_limit=None, time_limit=30)
def idem_atomic_slow(self, key: str, seconds: float) -> str:
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    time.sleep(seconds)
    return key


@ops_task(
    bind=True,
    idempotency_key="slow:{key}",
    idempotency_mode="lease",
    soft_time_limit=None,
    time_limit=8,
)
def idem_lease_slow(self, key: str, seconds: float) -> str:
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    time.sleep(seconds)
    return key


@ops_task(bind=True, idempotency_key=lambda order_id, **_: f"order:{order_id}")
def idem_callable_key(self, order_id: int, note: str = "") -> str:
    Effect.objects.create(key=f"order:{order_id}", task_id=self.request.id)
    return f"{order_id}:{note}"


@ops_task(bind=True, idempotency_key="fail:{key}")
def idem_atomic_fail_first(self, key: str, marker_dir: str) -> str:
    Effect.objects.create(key=key, task_id=self.request.id)
    marker = Path(marker_dir) / key
    if not marker.exists():
        marker.touch()
        raise ValueError("first run fails after its write")
    return "second run"


@ops_task(bind=True, idempotency_key="fail:{key}", idempotency_mode="lease")
def idem_lease_fail_first(self, key: str, marker_dir: str) -> str:
    Effect.objects.create(key=key, task_id=self.request.id)
    marker = Path(marker_dir) / key
    if not marker.exists():
        marker.touch()
        raise ValueError("first run fails")
    return "second run"


@ops_task(bind=True)
def idem_header_only(self, key: str) -> str | None:
    Effect.objects.create(key=key, task_id=self.request.id)
    return current_idempotency_key()


@ops_task(unique_for=60)
def idem_unique(report: str) -> str:
    Effect.objects.create(key=report)
    return report


# --- Replay chaos: one Effect row per execution, no idempotency key of its own -------------


@ops_task(bind=True)
def ops_replay_effect(self, key: str) -> None:
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())


@ops_task(
    bind=True,
    idempotency_key="hold:{key}",
    idempotency_mode="lease",
    soft_time_limit=None,
    time_limit=10,
    max_retries=0,
)
def idem_lease_hold(self, key: str, hold: float) -> str:
    """Holds its key's lease for ``hold`` seconds; no retry budget (waits must not spend it)."""
    Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    time.sleep(hold)
    return key


# --- Periodic jobs without a key: the slot claim alone makes each slot run once -------------


def _record_slot(request, label: str) -> int:
    run = ScheduleSlotRun.objects.create(
        slot_key=request_header(request, SCHEDULE_SLOT_HEADER) or "",
        periodic_task_name=request.get("periodic_task_name") or "",
        label=label,
        task_id=request.id or "",
    )
    return run.pk


@ops_task(bind=True)
def record_slot_unkeyed(self, label: str = "") -> int:
    """An OpsTask that did not opt into ``per_schedule_slot``: one row per execution."""
    return _record_slot(self.request, label)


@ops_task(bind=True, max_retries=3, retry_backoff=1, retry_backoff_max=1)
def record_slot_fail_first(self, marker_dir: str) -> int:
    """Fails its first attempt after writing its row; the retry must still run."""
    pk = _record_slot(self.request, f"attempt-{self.request.retries}")
    marker = Path(marker_dir) / "failed-once"
    if not marker.exists():
        marker.touch()
        raise TransientError("first attempt fails")
    return pk


@shared_task(bind=True)
def record_slot_plain_celery(self, label: str = "") -> int:
    """A plain Celery task: no slot claim, but the slot's task id shows a duplicate."""
    return _record_slot(self.request, label)


# --- Enqueue locks that must end with a message that never runs ------------------------------


@ops_task(bind=True)
def hold_until(self, key: str, go_file: str) -> str:
    """Occupies a pool process (an Effect row says it started) until the test says go."""
    Effect.objects.create(key=key, task_id=self.request.id)
    deadline = time.monotonic() + 60
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return key


@ops_task(unique_for=60)
def unique_dies_before_start(report: str) -> str:
    Effect.objects.create(key=report)  # never reached: the child dies in task_prerun
    return report


from celery.signals import task_prerun  # noqa: E402 - this section is appended


@task_prerun.connect(dispatch_uid="tests.die_before_start")
def _die_before_the_body(sender=None, **kwargs) -> None:
    """A child lost between delivery and the body (an OOM kill in a prerun hook)."""
    if getattr(sender, "name", "") == "tests.testapp.tasks.unique_dies_before_start":
        time.sleep(0.2)  # see _kill_on_first_delivery: the parent must have accepted the job
        os.kill(os.getpid(), signal.SIGKILL)


# --- Faithful replay: what a task really received ------------------------------------------


@ops_task
def ops_echo_call(*args, **kwargs) -> None:
    """Fails with the exact repr of its call: a dead letter's message shows what it got."""
    raise ValueError(repr((args, kwargs)))


@ops_task(bind=True)
def ops_record_call(self, *args, **kwargs) -> None:
    """One Effect per run, keyed by the repr of the call it received."""
    Effect.objects.create(key=repr((args, kwargs))[:200], task_id=self.request.id)


# --- Reliability scenarios (tests/test_reliability_soak.py) -----------------------------------


@ops_task(bind=True)
def soak_effect(self, key: str, fail: bool) -> None:
    """One Effect row, or a permanent failure (dead-lettered at once, never retried)."""
    if fail:
        raise PermanentError(f"{key} fails for good")
    Effect.objects.create(key=key, task_id=self.request.id or "", worker_pid=os.getpid())


@ops_task(bind=True, idempotency_key="soak:{key}")
def idem_soak_effect(self, key: str, fail: bool) -> None:
    """Like ``soak_effect``, atomic mode: a redelivery after a lost ack changes nothing."""
    Effect.objects.create(key=key, task_id=self.request.id or "", worker_pid=os.getpid())
    if fail:
        raise PermanentError(f"{key} fails for good")  # rolls its Effect back with the key


# --- Workflows replayed (issue 15): a chain with a link that fails until healed ------------


def _healed(tag: str) -> bool:
    return Effect.objects.filter(key=f"{tag}:healed").exists()


@ops_task(bind=True)
def wf_step(self, x: int, tag: str) -> int:
    Effect.objects.create(key=f"{tag}:step:{x}", task_id=self.request.id)
    return x + 1


@ops_task(bind=True)
def wf_flaky(self, x: int, tag: str) -> int:
    if not _healed(tag):
        raise PermanentError(f"{tag} is not healed yet")
    Effect.objects.create(key=f"{tag}:flaky:{x}", task_id=self.request.id)
    return x * 10


@ops_task(bind=True)
def wf_last(self, x: int, tag: str) -> int:
    Effect.objects.create(key=f"{tag}:last:{x}", task_id=self.request.id)
    return x


@shared_task(bind=True)
def wf_callback(self, result: int, tag: str) -> None:
    Effect.objects.create(key=f"{tag}:callback:{result}", task_id=self.request.id)


@shared_task
def wf_errback(request, exc, traceback, tag: str) -> None:
    # Called by the worker in-process (new-style errback: request, exc, traceback).
    Effect.objects.create(key=f"{tag}:errback:{request.id}", task_id=request.id)


@ops_task(bind=True)
def wf_member(self, x: int, tag: str) -> int:
    if not _healed(tag):
        raise PermanentError(f"{tag} is not healed yet")
    group_id, index = self.request.group, self.request.group_index
    Effect.objects.create(key=f"{tag}:member:{x}:{group_id}:{index}", task_id=self.request.id)
    return x
