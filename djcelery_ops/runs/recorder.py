"""The batched writer of job runs: a per-process buffer and the thread that writes it.

Signal receivers hand events (plain dicts) to the process's ``recorder``; it merges events
of one task id in memory (``runs.merge``) and a background thread upserts them
(``runs.sql``) every ``DJCELERY_OPS_RUNS_FLUSH_INTERVAL`` seconds or
``DJCELERY_OPS_RUNS_BATCH_SIZE`` task ids, on its own long-lived database connection (Django
connections are per thread, so Celery's Django fixup, which closes the task thread's
connection around every task, leaves it open).

A receipt is *held* (``hold()``): it is written only if its task is still waiting a whole
flush interval later (prefetched behind busy children, or waiting for its ETA). A task that
starts at once is written by the child alone, one row insert instead of an insert and an
update.

The writer is telemetry and must never take the worker down or grow without bound: any
error is logged and the batch kept (the database may come back), the thread backs off and
goes on, and at most ``MAX_PENDING_FACTOR`` batches wait in memory; events beyond that are
dropped and counted (``recorder.dropped``, logged). Losing the last unflushed batch when a
process is SIGKILLed is accepted. Dead letters are stored by their own synchronous code
path, never here.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, connections

from djcelery_ops.conf import ops_settings
from djcelery_ops.runs.merge import Event, merge_events
from djcelery_ops.runs.sql import write_runs
from djcelery_ops.signals import run_events_dropped, run_events_flushed

logger = logging.getLogger("djcelery_ops.runs")

MAX_PENDING_FACTOR = 20  # keep at most this many batches when the database is away
MAX_BACKOFF_SECONDS = 30.0


def _close_quietly() -> None:
    """Close this thread's connection so the next write opens a new one."""
    try:
        connections["default"].close()
    except Exception:
        logger.debug("closing the job-run writer's connection failed", exc_info=True)


class RunRecorder:
    """Per-process buffer of run events and the thread that writes them."""

    def __init__(self, *, start_writer: bool = True) -> None:
        # ``start_writer=False``: no thread, the owner calls ``flush()`` (tests, tools).
        self._start_writer = start_writer
        self._reset()

    def _reset(self) -> None:
        # Also called in a forked child: the parent's thread, locks and rows are not ours.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[str, Event] = {}
        self._held: dict[str, tuple[float, Event, Callable[[str], bool]]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # events given up, for good: logged, and shown by the status

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def capacity(self) -> int:
        """Task ids the buffer holds at most (the database away, or slower than the worker)."""
        return MAX_PENDING_FACTOR * int(ops_settings.RUNS_BATCH_SIZE)

    def add(self, event: Event) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            if len(self._pending) >= self.capacity and event["task_id"] not in self._pending:
                self._drop(1, "buffer full", "buffer_full")
                return
            self._merge(event)
            size = len(self._pending)
        self._ensure_writer()
        if size >= ops_settings.RUNS_BATCH_SIZE:
            self._wake.set()

    def hold(self, event: Event, waiting: Callable[[str], bool]) -> None:
        """Keep ``event`` back; write it only if ``waiting(task_id)`` still holds at the
        first flush at least one flush interval later (or at close). Otherwise the task
        has moved on and the process that runs it records it: the event is dropped."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._held[event["task_id"]] = (time.monotonic(), event, waiting)
        self._ensure_writer()

    def _drop(self, count: int, why: str, reason: str) -> None:
        """``why`` is logged; ``reason`` (one of a few words) labels the metric."""
        self.dropped += count
        run_events_dropped.send_robust(RunRecorder, count=count, reason=reason)
        logger.warning(
            "dropped %d job-run events (%s); %d dropped in this process so far",
            count, why, self.dropped,
        )  # fmt: skip

    def _merge(self, event: Event) -> None:
        # Called with self._lock held.
        old = self._pending.get(event["task_id"])
        self._pending[event["task_id"]] = event if old is None else merge_events(old, event)

    def _release_held(self, everything: bool = False) -> None:
        """Move held events that are due into the pending batch (``self._lock`` held)."""
        if not self._held:
            return
        due_before = time.monotonic() - ops_settings.RUNS_FLUSH_INTERVAL
        for task_id, (held_at, event, waiting) in list(self._held.items()):
            if not waiting(task_id):
                del self._held[task_id]
            elif everything or held_at <= due_before:
                del self._held[task_id]
                self._merge(event)

    def _ensure_writer(self) -> None:
        """Start the writer thread, or a new one if the last one ended (it should not)."""
        thread = self._thread
        if not self._start_writer or self._stop.is_set():
            return
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is not thread:
                return  # another caller started it meanwhile
            first = self._thread is None
            self._thread = threading.Thread(
                target=self._run, name="djcelery_ops-runs-writer", daemon=True
            )
        self._thread.start()
        if first:
            atexit.register(self.close)

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stop.is_set():
                self._wake.wait(max(backoff, ops_settings.RUNS_FLUSH_INTERVAL))
                self._wake.clear()
                try:
                    self.flush()
                    backoff = 0.0
                except Exception:
                    # Telemetry never ends the writer: log, back off, reconnect, go on.
                    logger.exception("job-run writer failed; retrying")
                    backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF_SECONDS)
                    _close_quietly()
        finally:
            connections.close_all()

    def flush(self, everything: bool = False) -> int:
        """Write what is pending now; on a database error keep it for the next flush.

        Held events are written when due (``everything``: all that still wait). Says how
        many task ids still wait afterwards (``run_events_flushed``, for the metrics)."""
        try:
            return self._flush(everything)
        finally:
            run_events_flushed.send_robust(RunRecorder, backlog=self.pending + self.held)

    def _flush(self, everything: bool) -> int:
        with self._write_lock:
            with self._lock:
                self._release_held(everything)
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                return write_runs(batch.values())
            except (DataError, IntegrityError):
                # The data itself is refused (a NUL byte in an exception message, say):
                # retrying would block every later batch. Write the rows one by one and
                # drop only those refused.
                return self._write_one_by_one(batch)
            except BaseException as error:
                # The database is away (or anything else went wrong): keep the batch for
                # the next flush, and let the caller see anything that is not a database
                # error.
                self._keep(batch)
                if not isinstance(error, DatabaseError | InterfaceError):
                    raise
                logger.warning("job runs not recorded yet (%s); %d kept", error, len(batch))
            _close_quietly()
            return 0

    def _write_one_by_one(self, batch: dict[str, Event]) -> int:
        written = 0
        events = list(batch.items())
        for index, (task_id, event) in enumerate(events):
            try:
                written += write_runs([event])
            except (DataError, IntegrityError) as error:
                self._drop(1, f"refused by the database: {error}", "refused")
                logger.warning("job-run event of %s dropped: %s", task_id, error)
            except BaseException:
                self._keep(dict(events[index:]))  # the connection went: keep the rest
                raise
        return written

    def _keep(self, batch: dict[str, Event]) -> None:
        with self._lock:
            if len(self._pending) + len(batch) > self.capacity:
                self._drop(len(batch), "database away too long", "database_away")
                return
            for task_id, event in batch.items():
                newer = self._pending.get(task_id)
                self._pending[task_id] = event if newer is None else merge_events(event, newer)

    def close(self) -> None:
        """Stop the writer thread and write the rest (worker and process shutdown, atexit)."""
        if self._pid != os.getpid():
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._stop.set()
            self._wake.set()
            thread.join(timeout=10)
        try:
            self.flush(everything=True)
        except Exception:
            logger.exception("job runs not written at shutdown")


recorder = RunRecorder()
os.register_at_fork(after_in_child=recorder._reset)
