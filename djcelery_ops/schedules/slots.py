"""The schedule slot of a periodic run: the time it was due, the same in every beat process.

Every dispatch of ``LockedDatabaseScheduler`` carries
``djcelery_ops_schedule_slot = "<name>@<slot time, UTC ISO>"`` and a task id derived from
it (uuid5), so a slot dispatched again (a leader cut off before saving ``last_run_at``, or
a late publish by an old leader) is the same message again, and an ``OpsTask`` runs each
slot once (see ``run_idempotently``). Interval and crontab slots lie on a grid
(``last_run_at`` is saved as the slot time, not the dispatch time), so two leaders compute
the same slots.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab, schedule
from celery.utils.time import maybe_make_aware
from django_celery_beat.clockedschedule import clocked

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
