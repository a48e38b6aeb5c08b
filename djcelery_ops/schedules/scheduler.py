"""``LockedDatabaseScheduler``: django-celery-beat's DatabaseScheduler behind a leader lease.

Run any number of beat processes with
``CELERY_BEAT_SCHEDULER = "djcelery_ops.schedules.scheduler:LockedDatabaseScheduler"``: the
one holding the lease dispatches, the others poll the lease and take over when it expires.

A leader dispatches only while it can prove its lease:

- Before each publish it renews the lease in the database (one statement) and checks that
  its term, the lease's fencing token, is still its own; a database error stops it.
- The publish must finish within the lease left (a deadline on the monotonic clock,
  whatever the broker does); a publish that overruns it makes the leader step down.
- After the publish, ``last_run_at`` is written in one statement that applies only while
  the lease row carries this leader's holder and term and only forwards: a frozen old
  leader cannot write its older run over its successor's. A write that fails or applies to
  no row makes the leader step down and reload from the database when it leads again.

Every dispatch carries ``djcelery_ops_schedule_slot = "<name>@<slot time, UTC ISO>"`` and a
task id derived from it (uuid5), the same in every beat process: a slot dispatched again
(a leader cut off before saving ``last_run_at``, or a late publish by an old leader) is the
same message again, and an ``OpsTask`` runs each slot once (see ``run_idempotently``).
Interval and crontab slots lie on a grid (``last_run_at`` is saved as the slot time, not
the dispatch time), so two leaders compute the same slots.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab, schedule
from celery.utils.time import maybe_make_aware
from django.db import DatabaseError, InterfaceError, close_old_connections
from django.db.models import Q
from django_celery_beat.clockedschedule import clocked
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from djcelery_ops.conf import ops_settings
from djcelery_ops.schedules import leader
from djcelery_ops.signals import beat_leadership_changed
from djcelery_ops.wire import SCHEDULE_SLOT_HEADER

logger = logging.getLogger(__name__)

RETRY_RENEW_SECONDS = 1.0
# The namespace of periodic task ids: uuid5(SLOT_TASK_ID_NAMESPACE, "<name>@<slot>").
SLOT_TASK_ID_NAMESPACE = uuid.UUID("4c0f1b59-1d0e-5a43-9a57-5c2f8d6e6b10")
# Crontab slots missed by more than this many runs are not searched one by one.
MAX_CRONTAB_STEPS = 1500


def _next_crontab_time(sched: Any, after: datetime) -> datetime:
    start, delta, _now = sched.remaining_delta(after)
    nxt: datetime = start + delta
    return nxt


def _latest_crontab_time(sched: Any, last_run_at: datetime, now: datetime) -> datetime:
    """The latest crontab time after ``last_run_at`` that is not after ``now`` (or the
    first one after ``last_run_at`` when none is due yet)."""
    slot = _next_crontab_time(sched, last_run_at)
    for _ in range(MAX_CRONTAB_STEPS):
        following = _next_crontab_time(sched, slot)
        if following > now:
            break
        slot = following
    return slot


def schedule_slot(entry: Any, now: datetime | None = None) -> datetime:
    """The time the due run of ``entry`` was scheduled for; the same in every beat process.

    Interval and crontab runs missed (beat down) fold into the latest slot not after
    ``now``: one run, like Celery's, named by the slot it stands for.
    """
    last_run_at: datetime = maybe_make_aware(entry.last_run_at)
    now = now or datetime.now(UTC)
    sched = entry.schedule
    if isinstance(sched, crontab):
        return _latest_crontab_time(sched, last_run_at, now)
    if isinstance(sched, schedule):
        run_every: timedelta = sched.run_every  # type: ignore[attr-defined]
        first = last_run_at + run_every
        if first >= now or run_every <= timedelta(0):
            return first
        return first + ((now - first) // run_every) * run_every
    if isinstance(sched, clocked):
        clocked_time: datetime = maybe_make_aware(sched.clocked_time)
        return clocked_time
    # Solar and custom schedules: the due time, to the second.
    due: datetime = now + sched.remaining_estimate(last_run_at)
    return due.replace(microsecond=0)


def on_grid(entry: Any) -> bool:
    """Interval and crontab slots are saved as ``last_run_at``, so the next follows on."""
    return isinstance(entry.schedule, crontab | schedule)


def slot_key_of(name: str, slot: datetime) -> str:
    return f"{name}@{slot.astimezone(UTC).isoformat()}"


def schedule_slot_key(entry: Any, now: datetime | None = None) -> str:
    return slot_key_of(entry.name, schedule_slot(entry, now))


def slot_task_id(slot_key: str) -> str:
    """The task id of a periodic dispatch: every beat process derives the same one."""
    return str(uuid.uuid5(SLOT_TASK_ID_NAMESPACE, slot_key))


class PublishDeadlineExceeded(TimeoutError):
    """The broker did not take the message within the lease left."""


class DeadlineProducer:
    """A kombu producer whose ``publish`` gives up at ``deadline`` (monotonic seconds).

    The publish runs in a thread the caller waits on with a timeout, so a broker that
    stops answering (no socket timeout configured) cannot hold the leader past its lease.
    A publish given up on may still reach the broker later; the slot's task id and the
    execution-time slot claim make that copy harmless.
    """

    def __init__(self, producer: Any, deadline: float) -> None:
        self._producer = producer
        self._deadline = deadline
        self.overdue = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.overdue = True
            raise PublishDeadlineExceeded("the lease ran out before the publish")
        outcome: dict[str, Any] = {}

        def publish() -> None:
            try:
                outcome["result"] = self._producer.publish(*args, **kwargs)
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc

        thread = threading.Thread(target=publish, name="djcelery-ops-beat-publish", daemon=True)
        thread.start()
        thread.join(left)
        if thread.is_alive():
            self.overdue = True
            raise PublishDeadlineExceeded(f"the broker did not take the message in {left:.1f} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")


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
        self.term: int | None = None
        self._lease_valid_until = 0.0
        self._renew_at = 0.0
        self._slots: dict[str, datetime] = {}
        super().__init__(*args, **kwargs)

    # The loop -------------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.hold_lease():
            return self._standby_interval()
        interval: float = super().tick(*args, **kwargs)
        if not self.is_leader:  # stepped down inside the tick
            return self._standby_interval()
        return max(0.0, min(interval, self._renew_at - time.monotonic()))

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
        self._dirty.clear()
        self._slots.clear()
        self._initial_read = True
        self._heap = None
        self.old_schedulers = None
        beat_leadership_changed.send_robust(type(self), leading=True)

    def _step_down(self, why: str) -> None:
        logger.warning("beat lease: %s stops dispatching: %s", self.lease_holder, why)
        self.is_leader = False
        self._dirty.clear()
        self._slots.clear()
        self._heap = None
        beat_leadership_changed.send_robust(type(self), leading=False)

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
        term = self.term
        if not self.hold_lease(renew=True) or self.term != term:
            # A new term reloads the schedule: this entry may be stale.
            self._step_down("the lease could not be proven before a publish")
            return
        guarded = DeadlineProducer(producer or self.producer, self._lease_valid_until)
        try:
            self.apply_async(entry, producer=guarded, advance=False)
        except Exception:
            logger.exception("beat: could not send %s", entry.name)
            if guarded.overdue:
                self._abandon_broker_connection()
                self._step_down("the publish did not finish within the lease")
                return
        self._save_run(entry)

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

    def _abandon_broker_connection(self) -> None:
        # A publish may still hang on it: the next term publishes on a new connection.
        self.__dict__.pop("producer", None)
        self.__dict__.pop("connection", None)

    def _save_run(self, entry: Any) -> None:
        """Persist the run just dispatched, so a successor does not dispatch it again;
        a write that cannot be made means this process may not dispatch any more."""
        try:
            saved = self._save_fenced(entry.model)
        except (DatabaseError, InterfaceError):
            logger.exception("beat: cannot save the run of %s", entry.name)
            close_old_connections()
            self._step_down("the run could not be saved")
            return
        if not saved:
            self._step_down(f"the lease or the run of {entry.name} moved on")
            return
        self._dirty.discard(entry.name)

    def _save_fenced(self, model: PeriodicTask) -> bool:
        """One UPDATE: only while we hold the lease in our term, and never backwards (the
        same value again is fine: Celery's periodic sync may have written it already)."""
        if self.term is None:
            return False
        newer = Q(last_run_at__isnull=True) | Q(last_run_at__lte=model.last_run_at)
        fence = leader.still_holds(ops_settings.BEAT_LEASE_NAME, self.lease_holder, self.term)
        rows = PeriodicTask.objects.filter(newer, fence, pk=model.pk)
        updated = rows.update(last_run_at=model.last_run_at, total_run_count=model.total_run_count)
        return bool(updated)

    # Persistence and shutdown ---------------------------------------------------------------

    def sync(self) -> None:
        # Only fenced, forward writes: a standby's copy of the runs is stale, and Celery's
        # plain save would write an old leader's runs over its successor's.
        if not self.is_leader:
            self._dirty.clear()
            return
        try:
            close_old_connections()
            while self._dirty:
                name = self._dirty.pop()
                entry = self._schedule.get(name) if self._schedule else None
                if entry is not None:
                    self._save_fenced(entry.model)
        except (DatabaseError, InterfaceError):
            logger.exception("beat: cannot save the runs; a successor may dispatch them again")

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


__all__ = [
    "LockedDatabaseScheduler",
    "schedule_slot",
    "schedule_slot_key",
    "slot_task_id",
]
