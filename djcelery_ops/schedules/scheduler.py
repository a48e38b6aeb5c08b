"""``LockedDatabaseScheduler``: django-celery-beat's DatabaseScheduler behind a leader lease.

Run any number of beat processes with
``CELERY_BEAT_SCHEDULER = "djcelery_ops.schedules.scheduler:LockedDatabaseScheduler"``: the
one holding the lease dispatches, the others poll the lease and take over when it expires.

- The leader renews at a third of ``DJCELERY_OPS_BEAT_LEASE_SECONDS`` and stops dispatching
  when a renewal finds the lease taken, or when its own (monotonic, conservative) view of
  the lease runs out while the database is unreachable.
- ``last_run_at`` is written right after each dispatch, not every 3 minutes, so a new leader
  reloads the schedule from the database and continues where the old one stopped.
- Every dispatch carries ``djcelery_ops_schedule_slot = "<name>@<slot time, UTC ISO>"``: a run
  dispatched again after a crash between publish and that write has the same key, so an
  idempotent task runs it once.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab, schedule
from celery.utils.time import maybe_make_aware
from django.db import DatabaseError, InterfaceError, close_old_connections
from django_celery_beat.clockedschedule import clocked
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from djcelery_ops.conf import ops_settings
from djcelery_ops.schedules import leader
from djcelery_ops.wire import SCHEDULE_SLOT_HEADER

logger = logging.getLogger(__name__)

RETRY_RENEW_SECONDS = 1.0


def schedule_slot(entry: Any) -> datetime:
    """The time the due run of ``entry`` was scheduled for; the same in every beat process."""
    last_run_at: datetime = maybe_make_aware(entry.last_run_at)
    sched = entry.schedule
    if isinstance(sched, crontab):
        start, delta, _now = sched.remaining_delta(last_run_at)
        slot: datetime = start + delta
        return slot
    if isinstance(sched, schedule):
        run_every: timedelta = sched.run_every  # type: ignore[attr-defined]
        return last_run_at + run_every
    if isinstance(sched, clocked):
        clocked_time: datetime = maybe_make_aware(sched.clocked_time)
        return clocked_time
    # Solar and custom schedules: the due time, to the second.
    due: datetime = datetime.now(UTC) + sched.remaining_estimate(last_run_at)
    return due.replace(microsecond=0)


def schedule_slot_key(entry: Any) -> str:
    return f"{entry.name}@{schedule_slot(entry).astimezone(UTC).isoformat()}"


# One lease identity per beat process: ``celery beat`` builds a throwaway scheduler for its
# banner before the one that runs, and the banner must name the id the leader logs.
_process_holders: dict[int, str] = {}
_taken_holders: set[str] = set()


def _process_holder_id() -> str:
    return _process_holders.setdefault(os.getpid(), leader.make_holder_id())


class LockedDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]
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
        self._lease_valid_until = 0.0
        self._renew_at = 0.0
        super().__init__(*args, **kwargs)

    # The loop -------------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.hold_lease():
            return self._standby_interval()
        interval: float = super().tick(*args, **kwargs)
        return max(0.0, min(interval, self._renew_at - time.monotonic()))

    def hold_lease(self) -> bool:
        """Renew when due; True while this process may dispatch."""
        if self.is_leader and time.monotonic() < self._renew_at:
            return True
        seconds = float(ops_settings.BEAT_LEASE_SECONDS)
        started = time.monotonic()
        try:
            won = leader.try_acquire(ops_settings.BEAT_LEASE_NAME, self.lease_holder, seconds)
        except (DatabaseError, InterfaceError):
            logger.exception("beat lease: cannot reach the database")
            close_old_connections()
            return self._ride_out_database_error()
        if not won:
            if self.is_leader:
                self._step_down("another beat process holds the lease")
            return False
        if not self.is_leader:
            self._become_leader()
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

    def _become_leader(self) -> None:
        logger.info("beat lease: %s is the leader now", self.lease_holder)
        self.is_leader = True
        # Continue from the runs the previous leader wrote, not from our stale copy.
        self._dirty.clear()
        self._initial_read = True
        self._heap = None
        self.old_schedulers = None

    def _step_down(self, why: str) -> None:
        logger.warning("beat lease: %s stops dispatching: %s", self.lease_holder, why)
        self.is_leader = False
        self._dirty.clear()
        self._heap = None

    # Dispatch -------------------------------------------------------------------------------

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        slot = schedule_slot_key(entry)
        headers = {**entry.options.get("headers", {}), SCHEDULE_SLOT_HEADER: slot}
        entry.options = {**entry.options, "headers": headers}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        super().apply_entry(entry, producer=producer)
        self._save_run(entry)

    def _save_run(self, entry: Any) -> None:
        """Persist the run just dispatched, so a successor does not dispatch it again."""
        model = entry.model
        try:
            PeriodicTask.objects.filter(pk=model.pk).update(
                last_run_at=model.last_run_at, total_run_count=model.total_run_count
            )
        except (DatabaseError, InterfaceError):
            logger.exception("beat: cannot save the run of %s; kept for the next sync", entry.name)
            close_old_connections()
        else:
            self._dirty.discard(entry.name)

    # Persistence and shutdown ---------------------------------------------------------------

    def sync(self) -> None:
        # A standby's copy of the runs is stale; writing it would undo the leader's.
        if self.is_leader:
            super().sync()
        else:
            self._dirty.clear()

    def close(self) -> None:
        try:
            super().close()
        finally:
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


__all__ = ["LockedDatabaseScheduler", "schedule_slot", "schedule_slot_key"]
