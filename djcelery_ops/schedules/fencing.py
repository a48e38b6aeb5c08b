"""What a beat leader may do only while it holds the lease: publish before its deadline,
and write the runs it dispatched under its term.

- ``DeadlineProducer`` and ``Publisher``: a publish must finish within the lease left (a
  deadline on the monotonic clock, whatever the broker does).
- ``PendingRuns``: the runs dispatched since the last write, written together in one
  statement (``write_runs``) that applies only while the lease row carries the leader's
  holder and term (database clock) and only forwards, so a frozen old leader cannot
  write its older runs over its successor's.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django_celery_beat.models import PeriodicTask

from djcelery_ops.db import Sql, update_from_values
from djcelery_ops.schedules import leader

# Runs written per statement at most: bounds the statement (3 parameters a run) and how
# many slots a successor may send again after a crash between publish and write.
MAX_PENDING_RUNS = 500


class PublishDeadlineExceeded(TimeoutError):
    """The broker did not take the message within the lease left; begun, the publish may
    still reach the broker later."""


class PublishNotStarted(PublishDeadlineExceeded):
    """The lease ran out before the publish began: nothing was sent, nor will be."""


class Publisher:
    """One thread that runs publishes for the leader, which waits for each with a timeout.

    A thread of its own, so a broker that stops answering (no socket timeout configured)
    cannot hold the leader past its lease; one thread for every publish, not one each
    (starting a thread cost more than the publish). A publish given up on leaves its
    thread stuck: the publisher is then ``stuck`` and the leader starts another one.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stuck = False
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], Any], deadline: float) -> Any:
        """``call()`` in the publisher's thread; ``PublishDeadlineExceeded`` if it has not
        returned by ``deadline`` (monotonic seconds), ``PublishNotStarted`` if it had not
        even begun (then it never will)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishNotStarted("the lease ran out before the publish")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="djcelery-ops-beat-publish", daemon=True
            )
            self._thread.start()
        job = _Job(call)
        self._jobs.put(job)
        if not job.done.wait(left):
            if job.cancel():
                raise PublishNotStarted(f"the publish had not begun after {left:.1f} s")
            if not job.done.is_set():
                self.stuck = True
                self._jobs.put(None)  # the thread ends once the stuck publish returns
                raise PublishDeadlineExceeded(
                    f"the broker did not take the message in {left:.1f} s"
                )
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.execute()


class _Job:
    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._state = "queued"  # then "started" or "cancelled", never both

    def cancel(self) -> bool:
        """Take the job back if the thread has not begun it; True when taken back."""
        with self._lock:
            if self._state == "queued":
                self._state = "cancelled"
            return self._state == "cancelled"

    def execute(self) -> None:
        with self._lock:
            if self._state == "cancelled":
                return
            self._state = "started"
        try:
            self.result = self.call()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        finally:
            self.done.set()


class DeadlineProducer:
    """A kombu producer whose ``publish`` gives up at ``deadline`` (monotonic seconds).

    The publish runs in the ``Publisher``'s thread. A publish given up on after it began
    may still reach the broker later; the slot's task id and the execution-time slot claim
    make that copy harmless. One given up on before it began is never sent.
    """

    def __init__(self, producer: Any, deadline: float, publisher: Publisher) -> None:
        self._producer = producer
        self._deadline = deadline
        self._publisher = publisher
        self.gave_up: PublishDeadlineExceeded | None = None

    @property
    def overdue(self) -> bool:
        """The deadline passed: the leader must step down."""
        return self.gave_up is not None

    @property
    def sent_nothing(self) -> bool:
        """...before the publish began: no late copy can come."""
        return isinstance(self.gave_up, PublishNotStarted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._publisher.run(
                lambda: self._producer.publish(*args, **kwargs), self._deadline
            )
        except PublishDeadlineExceeded as exc:
            self.gave_up = exc
            raise


@dataclass(frozen=True)
class Run:
    """A dispatch to record: the periodic task's new ``last_run_at`` and run count."""

    pk: int
    last_run_at: datetime
    total_run_count: int


def write_runs(runs: list[Run], fence: Sql) -> int:
    """One UPDATE for all ``runs``, applied only where ``fence`` holds and never backwards
    (the same value again is fine); returns how many rows it wrote."""
    forwards = Sql(
        "({table}.last_run_at IS NULL OR {table}.last_run_at <= {new:last_run_at})"
        f" AND {fence.text}",
        fence.params,
    )
    return update_from_values(
        PeriodicTask,
        key="id",
        columns=("last_run_at", "total_run_count"),
        rows=[(run.pk, run.last_run_at, run.total_run_count) for run in runs],
        where=forwards,
    )


class PendingRuns:
    """The runs a leader dispatched and has not written yet, one per periodic task."""

    def __init__(self) -> None:
        self._runs: dict[int, Run] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, model: PeriodicTask) -> None:
        self._runs[model.pk] = Run(model.pk, model.last_run_at, model.total_run_count)

    @property
    def full(self) -> bool:
        return len(self._runs) >= MAX_PENDING_RUNS

    def clear(self) -> None:
        self._runs.clear()

    def write(self, lease: str, holder: str, term: int) -> bool:
        """Write every pending run in one statement under ``term``; False when any of them
        was not written (the lease moved on, or a run in the database is newer). Raises
        the database's error; the runs are forgotten either way."""
        runs = list(self._runs.values())
        self._runs.clear()
        if not runs:
            return True
        return write_runs(runs, leader.fence(lease, holder, term)) == len(runs)
