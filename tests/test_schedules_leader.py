"""The leader lease and ``LockedDatabaseScheduler``: several beat processes, one dispatcher."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from djcelery_ops.schedules import leader
from djcelery_ops.schedules.scheduler import (
    SLOT_TASK_ID_NAMESPACE,
    LockedDatabaseScheduler,
    schedule_slot,
    schedule_slot_key,
    slot_task_id,
)
from tests.beat import BeatProcess
from tests.celery_app import app as celery_app
from tests.testapp.models import ScheduleSlotRun
from tests.utils import wait_until
from tests.worker import settle

LEASE = "default"


@pytest.mark.django_db
def test_lease__second_holder_loses_until_the_lease_expires():
    assert leader.try_acquire("t", "a:1:x", 0.5)
    assert not leader.try_acquire("t", "b:2:y", 30)
    assert leader.try_acquire("t", "a:1:x", 0.5)  # renewal by the holder

    wait_until(lambda: leader.try_acquire("t", "b:2:y", 30), timeout=10, what="expiry")
    assert not leader.try_acquire("t", "a:1:x", 30)
    assert leader.lease_state("t").holder == "b:2:y"


@pytest.mark.django_db
def test_lease__release_lets_a_standby_take_over_at_once():
    assert leader.try_acquire("t", "a:1:x", 60)
    assert leader.release("t", "a:1:x")
    assert not leader.lease_state("t").is_held
    assert leader.try_acquire("t", "b:2:y", 60)
    assert not leader.release("t", "a:1:x")  # only the holder releases


@pytest.mark.django_db
def test_lease__state_uses_the_database_clock():
    assert leader.try_acquire("t", "host:42:abc", 30)
    state = leader.lease_state("t")
    assert state.is_held
    assert 25 < state.seconds_left <= 30
    assert leader.holder_pid(state.holder) == 42


@pytest.mark.django_db
def test_scheduler__leader_steps_down_when_renewal_finds_the_lease_taken(settings):
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 0.3
    first = LockedDatabaseScheduler(app=celery_app, lazy=True)
    second = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert first.hold_lease() and first.is_leader
    assert not second.hold_lease()

    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 30
    wait_until(second.hold_lease, timeout=10, what="the standby to take over")
    assert not first.hold_lease()
    assert not first.is_leader
    assert first.tick() == pytest.approx(first._standby_interval())


@pytest.mark.django_db(transaction=True)  # beat's sync closes old connections
def test_scheduler__clean_close_releases_the_lease():
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert scheduler.hold_lease()
    scheduler.close()
    assert not leader.lease_state(LEASE).is_held


@pytest.mark.django_db
def test_slot_key__interval_slot_is_last_run_plus_interval():
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    last = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    task = PeriodicTask.objects.create(name="tick", task="x", interval=interval, last_run_at=last)
    entry = ModelEntry(task, app=celery_app)
    due = last + timedelta(seconds=12)
    assert schedule_slot_key(entry, now=due) == "tick@2026-01-02T03:04:15.600000+00:00"


@pytest.mark.django_db
def test_slot_key__missed_interval_runs_fold_into_the_latest_slot_on_the_same_grid():
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    last = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    task = PeriodicTask.objects.create(name="tick", task="x", interval=interval, last_run_at=last)
    entry = ModelEntry(task, app=celery_app)
    # Beat was down for 47 s: one run, for the slot at +40 s, whoever computes it.
    assert schedule_slot(entry, now=last + timedelta(seconds=47)) == last + timedelta(seconds=40)


@pytest.mark.django_db
def test_slot_key__crontab_slot_is_the_crontab_time_in_utc():
    cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    last = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    task = PeriodicTask.objects.create(name="nightly", task="x", crontab=cron, last_run_at=last)
    # 02:30 in Berlin on 3 January (winter, UTC+1) is 01:30 UTC.
    key = schedule_slot_key(ModelEntry(task, app=celery_app), now=last + timedelta(hours=14))
    assert key == "nightly@2026-01-03T01:30:00+00:00"
    # Three nights missed: the run stands for the latest night.
    late = schedule_slot_key(ModelEntry(task, app=celery_app), now=last + timedelta(days=3))
    assert late == "nightly@2026-01-05T01:30:00+00:00"


def test_slot_task_id__is_the_same_in_every_process_and_differs_per_slot():
    key = "nightly@2026-01-03T01:30:00+00:00"
    assert slot_task_id(key) == slot_task_id(key)
    assert slot_task_id(key) == str(uuid.uuid5(SLOT_TASK_ID_NAMESPACE, key))
    assert slot_task_id(key) != slot_task_id("nightly@2026-01-04T01:30:00+00:00")


@pytest.mark.django_db
def test_lease__takeover_starts_a_new_term_and_renewal_keeps_it():
    first = leader.try_acquire("t", "a:1:x", 0.3)
    assert first == 1
    assert leader.try_acquire("t", "a:1:x", 0.3) == first
    second = wait_until(lambda: leader.try_acquire("t", "b:2:y", 30), timeout=10, what="expiry")
    assert second == first + 1
    assert leader.release("t", "b:2:y")
    assert leader.try_acquire("t", "b:2:y", 30) == second + 1  # a release ends the term


def _every_second_task(name: str = "every-second") -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    last = datetime.now(UTC) - timedelta(seconds=5)
    return PeriodicTask.objects.create(
        name=name, task="tests.testapp.tasks.ops_add", interval=every, last_run_at=last
    )


def _reserved_entry(scheduler: LockedDatabaseScheduler, name: str):
    entry = scheduler.schedule[name]
    return entry, scheduler.reserve(entry)


@pytest.mark.django_db(transaction=True)  # beat's sync closes old connections
def test_save_run__an_old_leader_cannot_write_over_its_successors_run(settings):
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 0.3
    task = _every_second_task()
    old = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert old.hold_lease()
    entry, _next = _reserved_entry(old, task.name)
    old_run = entry.model.last_run_at

    new = LockedDatabaseScheduler(app=celery_app, lazy=True)
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 30
    wait_until(new.hold_lease, timeout=10, what="the successor to take over")
    assert new.term == old.term + 1
    new_entry, _ = _reserved_entry(new, task.name)
    new._save_run(new_entry)
    task.refresh_from_db()
    assert task.last_run_at == new_entry.model.last_run_at

    old._save_run(entry)  # the old leader wakes up with its run: not written, it stops
    task.refresh_from_db()
    assert task.last_run_at == new_entry.model.last_run_at
    assert old_run == entry.model.last_run_at
    assert not old.is_leader
    assert new.is_leader


@pytest.mark.django_db(transaction=True)
def test_save_run__last_run_at_never_moves_backwards():
    task = _every_second_task()
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert scheduler.hold_lease()
    entry, _ = _reserved_entry(scheduler, task.name)
    later = entry.model.last_run_at + timedelta(hours=1)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=later)
    scheduler._save_run(entry)
    task.refresh_from_db()
    assert task.last_run_at == later
    assert not scheduler.is_leader  # it reloads before it dispatches again


@pytest.mark.django_db(transaction=True)
def test_save_run__a_run_saved_is_the_slot_so_the_next_slot_follows_on_the_grid():
    task = _every_second_task()
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert scheduler.hold_lease()
    entry = scheduler.schedule[task.name]
    slot = schedule_slot(entry)
    scheduler.reserve(entry)
    scheduler._save_run(entry)
    task.refresh_from_db()
    assert task.last_run_at == slot
    assert scheduler.is_leader


def _holder() -> str:
    state = leader.lease_state(LEASE)
    return state.holder if state is not None and state.is_held else ""


def _slot_times() -> list[datetime]:
    keys = ScheduleSlotRun.objects.values_list("slot_key", flat=True)
    return sorted(datetime.fromisoformat(key.split("@", 1)[1]) for key in keys)


@pytest.mark.worker
def test_two_beats__each_slot_runs_once_and_sigkill_of_the_leader_hands_over(
    start_worker, celery_queue
):
    start_worker()
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="every-second",
        task="tests.testapp.tasks.record_schedule_slot",
        interval=every_second,
        queue=celery_queue,
        expire_seconds=30,
    )
    beats = [BeatProcess(queue=celery_queue).start() for _ in range(2)]
    try:
        first_holder = wait_until(_holder, timeout=30, what="a beat to lead")
        first = next(b for b in beats if b.pid == leader.holder_pid(first_holder))
        standby = next(b for b in beats if b is not first)
        wait_until(lambda: ScheduleSlotRun.objects.count() >= 3, what="3 runs by the first")

        first.kill()
        killed_at = datetime.now(UTC)
        before_kill = ScheduleSlotRun.objects.count()
        second_holder = wait_until(
            lambda: leader.holder_pid(_holder()) == standby.pid and _holder(),
            timeout=10 + 10,
            what="the standby to take the lease",
        )
        wait_until(
            lambda: ScheduleSlotRun.objects.count() >= before_kill + 3,
            what="3 runs by the new leader",
        )
        standby.stop()
        settle(2)  # runs already sent may still arrive; none may be a duplicate
    finally:
        for beat in beats:
            beat.stop()

    runs = list(ScheduleSlotRun.objects.order_by("created_at"))
    counts = Counter(run.slot_key for run in runs)
    assert [key for key, n in counts.items() if n > 1] == [], "a slot ran twice"
    assert {run.periodic_task_name for run in runs} == {"every-second"}
    assert all(key.startswith("every-second@") for key in counts)
    slots = _slot_times()
    gaps = [later - earlier for earlier, later in zip(slots, slots[1:], strict=False)]
    # One dispatcher: slots are at least the interval apart (two would interleave).
    assert min(gaps) >= timedelta(seconds=0.9), gaps
    # The handover took at most one lease plus the standby's poll and a dispatch.
    first_after_kill = min(s for s in slots if s > killed_at - timedelta(seconds=1))
    assert first_after_kill - killed_at < timedelta(seconds=10 + 5)
    assert second_holder != first_holder
    assert "is the leader now" in standby.log()


@pytest.mark.django_db
def test_ops_status__prints_the_beat_leader():
    out = io.StringIO()
    call_command("celery_ops_status", stdout=out)
    assert out.getvalue() == "Beat leader: none (no beat process with the locked scheduler)\n"

    leader.try_acquire(LEASE, "host:42:abc", 30)
    out = io.StringIO()
    call_command("celery_ops_status", stdout=out)
    text = out.getvalue()
    assert text.startswith("Beat leader: host:42:abc (lease 'default', expires in ")
    assert text.endswith(" s)\n")

    leader.release(LEASE, "host:42:abc")
    out = io.StringIO()
    call_command("celery_ops_status", stdout=out)
    assert out.getvalue() == "Beat leader: none (lease 'default' expired or released)\n"
