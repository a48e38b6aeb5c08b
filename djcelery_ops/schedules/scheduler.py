"""``LockedDatabaseScheduler``: django-celery-beat's DatabaseScheduler behind a leader lease.

Run any number of beat processes with
``CELERY_BEAT_SCHEDULER = "djcelery_ops.schedules.scheduler:LockedDatabaseScheduler"``: the
one holding the lease dispatches, the others poll the lease and take over when it expires.

A leader dispatches only while it can prove its lease:

- Before the first publish of a burst (the entries due together; a single entry is a
  burst of one) it renews the lease in the database (one statement) and checks that its
  term, the lease's fencing token, is still its own; a database error stops it. Within a
  burst it renews every third of the lease, as at any time.
- Each publish must finish within the lease left (a deadline on the monotonic clock,
  whatever the broker does); a publish that overruns it makes the leader step down.
- The runs of a burst (``last_run_at``, run count) are written together, when beat is
  about to sleep (or every ``fencing.MAX_PENDING_RUNS`` runs), in one statement that
  applies only while the lease row carries this leader's holder and term and only
  forwards: a frozen old leader cannot write its older runs over its successor's. A write
  that fails or misses a row makes the leader step down and reload from the database when
  it leads again.

Every dispatch carries a schedule slot header and a task id derived from it (see
``slots``): a slot dispatched again (a leader cut off before writing its runs, or a late
publish by an old leader) is the same message again, and an ``OpsTask`` runs each slot
once.

An idle tick costs one small query and a look at the heap (see ``quiet``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from django.db import DatabaseError, InterfaceError, close_old_connections

from djcelery_ops.conf import ops_settings
from djcelery_ops.schedules import leader
from djcelery_ops.schedules.fencing import (
    DeadlineProducer,
    PendingRuns,
    PublishDeadlineExceeded,
    Publisher,
)
from djcelery_ops.schedules.quiet import QuietDatabaseScheduler
from djcelery_ops.schedules.slots import (
    SLOT_TASK_ID_NAMESPACE,
    on_grid,
    schedule_slot,
    schedule_slot_key,
    slot_key_of,
    slot_task_id,
)
from djcelery_ops.signals import beat_leadership_changed
from djcelery_ops.wire import SCHEDULE_SLOT_HEADER

logger = logging.getLogger(__name__)

RETRY_RENEW_SECONDS = 1.0


# One lease identity per beat process: ``celery beat`` builds a throwaway scheduler for its
# banner before the one that runs, and the banner must name the id the leader logs.
_process_holders: dict[int, str] = {}
_taken_holders: set[str] = set()


def _process_holder_id() -> str:
    return _process_holders.setdefault(os.getpid(), leader.make_holder_id())


class LockedDatabaseScheduler(QuietDatabaseScheduler):
    """A DatabaseScheduler that dispatches only while it holds the leader lease."""

    _lease_holder: str | None = None

    @property
    def lease_holder(self) -> str:
        """The process's id, taken by the first scheduler that uses it (a second one in the
        same process, as in tests, gets an id of its own)."""
        if self._lease_holder is None:
            holder = _process_holder_id()
            holder = leader.make_holder_id() if holder in _taken_holders else holder
            _taken_holders.add(holder)
            self._lease_holder = holder
        return self._lease_holder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.is_leader = False
        self.term: int | None = None
        self._lease_valid_until = 0.0
        self._renew_at = 0.0
        self._slots: dict[str, Any] = {}
        self._pending = PendingRuns()
        self._publisher = Publisher()
        super().__init__(*args, **kwargs)

    # The loop -------------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.hold_lease():
            return self._standby_interval()
        interval: float = super().tick(*args, **kwargs)
        if self.is_leader and interval > 0:  # beat sleeps now: the burst is over
            self._write_runs()
        if not self.is_leader:  # stepped down inside the tick
            return self._standby_interval()
        return max(0.0, min(interval, self._renew_at - time.monotonic()))

    def in_burst(self) -> bool:
        return bool(self._pending)

    def hold_lease(self, *, renew: bool = False) -> bool:
        """Renew when due (or now, with ``renew``); True while this process may dispatch."""
        if self.is_leader and not renew and time.monotonic() < self._renew_at:
            return True
        seconds = float(ops_settings.BEAT_LEASE_SECONDS)
        started = time.monotonic()
        try:
            term = leader.try_acquire(ops_settings.BEAT_LEASE_NAME, self.lease_holder, seconds)
        except (DatabaseError, InterfaceError):
            logger.exception("beat lease: cannot reach the database")
            close_old_connections()
            return not renew and self._ride_out_database_error()
        if term is None:
            if self.is_leader:
                self._step_down("another beat process holds the lease")
            return False
        if not self.is_leader or term != self.term:
            self._become_leader(term)
        # Our deadline starts before the statement ran, so it ends before the database's.
        self._lease_valid_until = started + seconds * 0.9
        self._renew_at = started + seconds / 3
        return True

    def _ride_out_database_error(self) -> bool:
        if self.is_leader and time.monotonic() < self._lease_valid_until:
            self._renew_at = time.monotonic() + RETRY_RENEW_SECONDS
            return True
        if self.is_leader:
            self._step_down("the lease could not be renewed in time")
        return False

    def _standby_interval(self) -> float:
        return min(float(self.max_interval), float(ops_settings.BEAT_LEASE_SECONDS) / 3)

    def _become_leader(self, term: int) -> None:
        logger.info("beat lease: %s is the leader now (term %s)", self.lease_holder, term)
        self.is_leader = True
        self.term = term
        # Continue from the runs the previous leader wrote, not from our stale copy.
        self._forget_runs()
        self._initial_read = True
        self._heap = None
        self.old_schedulers = None
        beat_leadership_changed.send_robust(type(self), leading=True)

    def _step_down(self, why: str) -> None:
        logger.warning("beat lease: %s stops dispatching: %s", self.lease_holder, why)
        self.is_leader = False
        self._forget_runs()
        self._heap = None
        beat_leadership_changed.send_robust(type(self), leading=False)

    def _forget_runs(self) -> None:
        # Runs not written: whoever leads next sends their slots again, with the same ids.
        self._dirty.clear()
        self._slots.clear()
        self._pending.clear()

    # Dispatch -------------------------------------------------------------------------------

    def reserve(self, entry: Any) -> Any:
        """Advance ``entry`` past its due slot; interval and crontab runs are saved as the
        slot time, so every leader computes the next slot from the same point."""
        slot = schedule_slot(entry)
        self._slots[entry.name] = slot
        new_entry = super().reserve(entry)
        if on_grid(entry):
            new_entry.model.last_run_at = slot
            new_entry.last_run_at = slot
        return new_entry

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if not self.is_leader:  # stepped down earlier in this tick
            return
        term = self.term
        # The first publish since the runs were last written proves the lease first.
        if not self.hold_lease(renew=not self._pending) or self.term != term:
            # A new term reloads the schedule: this entry may be stale.
            self._step_down("the lease could not be proven before a publish")
            return
        if self._publisher.stuck:
            self._publisher = Publisher()
        guarded = DeadlineProducer(
            producer or self.producer, self._lease_valid_until, self._publisher
        )
        try:
            self.apply_async(entry, producer=guarded, advance=False)
        except Exception:
            if not guarded.overdue:
                logger.exception("beat: could not send %s", entry.name)
            else:
                self._log_overdue(entry, guarded.sent_nothing)
                self._abandon_broker_connection()
                if self._write_runs():  # the runs sent before this one, if still ours
                    self._step_down("the publish did not finish within the lease")
                return
        self._pending.add(entry.model)
        if self._pending.full:
            self._write_runs()

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        slot = self._slots.pop(entry.name, None) or schedule_slot(entry)
        key = slot_key_of(entry.name, slot)
        logger.info(
            "beat: sending %s (%s), slot %s (term %s)", entry.name, entry.task, key, self.term
        )
        headers = {**entry.options.get("headers", {}), SCHEDULE_SLOT_HEADER: key}
        entry.options = {**entry.options, "headers": headers, "task_id": slot_task_id(key)}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)

    def _log_overdue(self, entry: Any, sent_nothing: bool) -> None:
        key = entry.options.get("headers", {}).get(SCHEDULE_SLOT_HEADER, entry.name)
        if sent_nothing:
            logger.warning(
                "beat: slot %s was not sent: the lease ran out before its publish began;"
                " whoever leads next sends the latest due slot",
                key,
            )
        else:
            logger.warning(
                "beat: slot %s: the publish did not finish within the lease; the message"
                " may still reach the broker, where its task id makes it run once",
                key,
            )

    def _abandon_broker_connection(self) -> None:
        # A publish may still hang on it: the next term publishes on a new connection.
        self.__dict__.pop("producer", None)
        self.__dict__.pop("connection", None)

    def _save_run(self, entry: Any) -> bool:
        """Write the run of ``entry`` (and any other pending) now."""
        self._pending.add(entry.model)
        return self._write_runs()

    def _write_runs(self) -> bool:
        """Write the runs dispatched since the last write, so a successor does not dispatch
        them again; a write that cannot be made means this process may not dispatch any
        more. True when every run was written."""
        if self.term is None or not self._pending:
            return self.term is not None
        try:
            written = self._pending.write(
                ops_settings.BEAT_LEASE_NAME, self.lease_holder, self.term
            )
        except (DatabaseError, InterfaceError):
            logger.exception("beat: cannot save the runs; a successor may dispatch them again")
            close_old_connections()
            self._step_down("the runs could not be saved")
            return False
        if not written:
            self._step_down("the lease or a run in the database moved on")
        return written

    # Persistence and shutdown ---------------------------------------------------------------

    def sync(self) -> None:
        # Only fenced, forward writes: a standby's copy of the runs is stale, and Celery's
        # plain save would write an old leader's runs over its successor's.
        self._dirty.clear()  # the runs to write are in ``_pending``
        if not self.is_leader:
            self._pending.clear()
            return
        self.keep_connection()
        self._write_runs()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._publisher.close()
            if self.is_leader:
                self._release()

    def _release(self) -> None:
        try:
            leader.release(ops_settings.BEAT_LEASE_NAME, self.lease_holder)
        except (DatabaseError, InterfaceError):
            logger.exception("beat lease: could not release; it expires on its own")
        self.is_leader = False

    @property
    def info(self) -> str:
        role = "leader" if self.is_leader else "standby"
        holder = self._lease_holder or _process_holder_id()  # the banner takes no id
        return f"    . lease -> {ops_settings.BEAT_LEASE_NAME} ({role}, {holder})"


__all__ = [
    "SLOT_TASK_ID_NAMESPACE",
    "LockedDatabaseScheduler",
    "PublishDeadlineExceeded",
    "schedule_slot",
    "schedule_slot_key",
    "slot_task_id",
]
