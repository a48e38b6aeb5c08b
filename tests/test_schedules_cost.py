"""What ``LockedDatabaseScheduler`` does per tick: an idle tick is one small query on the
same connection, and a burst of due entries is one lease renewal, one publish each and
one fenced write of all their runs. Counts of statements, not timings (bench/ measures)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from djcelery_ops.schedules.fencing import (
    DeadlineProducer,
    PublishDeadlineExceeded,
    Publisher,
    PublishNotStarted,
)
from djcelery_ops.schedules.scheduler import LockedDatabaseScheduler, slot_task_id
from djcelery_ops.schedules.slots import schedule_slot
from tests.celery_app import app as celery_app
from tests.replay_helpers import drain
from tests.utils import wait_until

pytestmark = pytest.mark.django_db(transaction=True)  # beat's sync closes old connections


def _hourly_tasks(queue: str, names: list[str], *, due: bool) -> None:
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    last = datetime.now(UTC) - (timedelta(hours=3) if due else timedelta(0))
    for name in names:
        PeriodicTask.objects.create(
            name=name, task="tests.testapp.tasks.ops_add", interval=hourly, queue=queue,
            last_run_at=last, args="[1, 2]",
        )  # fmt: skip


def _statements(queries: CaptureQueriesContext) -> list[str]:
    # ``transaction.commit()`` outside a transaction is logged as "COMMIT" but sends nothing.
    return [q["sql"] for q in queries.captured_queries if q["sql"] != "COMMIT"]


def _run_burst(scheduler: LockedDatabaseScheduler) -> int:
    """Tick until beat would sleep; returns the ticks it took."""
    for ticks in range(1, 100):
        if scheduler.tick() > 0:
            return ticks
    raise AssertionError("the burst did not end")


def test_burst__one_renewal_one_publish_each_and_one_write_of_all_runs(celery_queue):
    names = [f"due-{n}" for n in range(5)]
    _hourly_tasks(celery_queue, names, due=True)
    _hourly_tasks(celery_queue, ["later"], due=False)
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert scheduler.hold_lease()
    slots = {name: schedule_slot(scheduler.schedule[name]) for name in names}
    try:
        with CaptureQueriesContext(connection) as queries:
            _run_burst(scheduler)
    finally:
        scheduler.close()

    statements = _statements(queries)
    writes = [sql for sql in statements if sql.startswith("UPDATE") and "periodictask" in sql]
    renewals = [sql for sql in statements if "schedulerlease" in sql and "INSERT" in sql]
    assert len(writes) == 1, writes
    assert len(renewals) == 1, renewals  # proved once, before the first publish
    saved = dict(PeriodicTask.objects.filter(name__in=names).values_list("name", "last_run_at"))
    assert saved == slots
    messages = drain(celery_queue)
    sent = sorted(m["headers"]["djcelery_ops_schedule_slot"] for m in messages)
    assert sent == sorted(f"{name}@{slots[name].isoformat()}" for name in names)
    assert {m["headers"]["id"] for m in messages} == {slot_task_id(key) for key in sent}


def test_burst__a_deposed_leader_writes_none_of_its_runs_and_steps_down(settings, celery_queue):
    names = ["a", "b", "c"]
    _hourly_tasks(celery_queue, names, due=True)
    before = dict(PeriodicTask.objects.values_list("name", "last_run_at"))
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 0.3
    old = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert old.hold_lease()
    for name in names:  # dispatched, not written yet
        entry = old.schedule[name]
        old.reserve(entry)
        old._pending.add(entry.model)

    new = LockedDatabaseScheduler(app=celery_app, lazy=True)
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 30
    wait_until(new.hold_lease, timeout=10, what="the successor to take over")

    assert old._write_runs() is False
    assert not old.is_leader
    assert len(old._pending) == 0
    assert dict(PeriodicTask.objects.values_list("name", "last_run_at")) == before


def test_burst__a_newer_run_in_the_database_is_kept_and_the_leader_steps_down(celery_queue):
    _hourly_tasks(celery_queue, ["older", "newer"], due=True)
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    assert scheduler.hold_lease()
    slots = {}
    for name in ("older", "newer"):
        entry = scheduler.schedule[name]
        slots[name] = scheduler.reserve(entry).last_run_at
        scheduler._pending.add(entry.model)
    ahead = slots["newer"] + timedelta(hours=5)
    PeriodicTask.objects.filter(name="newer").update(last_run_at=ahead)  # a successor's run

    assert scheduler._write_runs() is False
    assert not scheduler.is_leader  # it reloads before it dispatches again
    saved = dict(PeriodicTask.objects.values_list("name", "last_run_at"))
    assert saved == {"older": slots["older"], "newer": ahead}


def test_idle_tick__one_query_on_the_same_connection_and_changes_are_still_seen(celery_queue):
    assert connection.settings_dict["CONN_MAX_AGE"] == 0  # Django's default: per request
    _hourly_tasks(celery_queue, [f"idle-{n}" for n in range(20)], due=False)
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    try:
        assert scheduler.tick() > 0  # leads, reads the schedule, builds the heap
        before = connection.connection
        with CaptureQueriesContext(connection) as queries:
            assert scheduler.tick() > 0
        assert len(_statements(queries)) == 1, _statements(queries)
        assert "periodictasks" in _statements(queries)[0]  # "has the schedule changed?"
        assert connection.connection is before

        _hourly_tasks(celery_queue, ["added-due"], due=True)  # bumps the change marker
        _run_burst(scheduler)
    finally:
        scheduler.close()
    sent = [m["headers"]["djcelery_ops_schedule_slot"] for m in drain(celery_queue)]
    assert [key.split("@")[0] for key in sent] == ["added-due"]


def test_publisher__a_publish_past_its_deadline_gives_up_and_the_next_gets_a_new_thread():
    release = threading.Event()

    class HangingProducer:
        def publish(self, *args, **kwargs):
            release.wait(30)
            return "late"

    class Producer:
        def publish(self, *args, **kwargs):
            return ("sent", threading.current_thread().name, args)

    publisher = Publisher()
    try:
        hanging = DeadlineProducer(HangingProducer(), time.monotonic() + 0.2, publisher)
        with pytest.raises(PublishDeadlineExceeded):
            hanging.publish("message")
        assert hanging.overdue and publisher.stuck
        expired = DeadlineProducer(Producer(), time.monotonic() - 1, Publisher())
        with pytest.raises(PublishDeadlineExceeded, match="ran out before"):
            expired.publish("message")
        fresh = Publisher()
        result = DeadlineProducer(Producer(), time.monotonic() + 30, fresh).publish("m")
        assert result == ("sent", "djcelery-ops-beat-publish", ("m",))
        fresh.close()
    finally:
        release.set()


def test_publisher__a_publish_given_up_before_it_began_is_never_sent():
    """A publish still queued when its deadline passes is taken back: nothing reaches the
    broker later, and the caller is told so (a late copy is possible only once begun)."""
    release = threading.Event()
    called: list[str] = []

    class Producer:
        def publish(self, body, **kwargs):
            called.append(body)
            if body == "hangs":
                release.wait(30)
            return body

    publisher = Publisher()
    try:
        busy = threading.Thread(
            target=DeadlineProducer(Producer(), time.monotonic() + 30, publisher).publish,
            args=("hangs",),
        )
        busy.start()
        wait_until(lambda: called == ["hangs"], what="the publisher thread to be busy")
        queued = DeadlineProducer(Producer(), time.monotonic() + 0.2, publisher)
        with pytest.raises(PublishNotStarted):
            queued.publish("queued")
        assert queued.overdue and queued.sent_nothing
        assert not publisher.stuck  # the thread is busy with another caller's publish
    finally:
        release.set()
    busy.join(10)
    after = DeadlineProducer(Producer(), time.monotonic() + 30, publisher).publish("after")
    assert after == "after"
    assert called == ["hangs", "after"]  # the one taken back never ran
    publisher.close()


def test_apply_entry__the_lease_runs_out_before_the_publish__the_slot_is_logged_as_not_sent(
    settings, celery_queue, caplog
):
    _hourly_tasks(celery_queue, ["late"], due=True)
    before = PeriodicTask.objects.get(name="late").last_run_at
    scheduler = LockedDatabaseScheduler(app=celery_app, lazy=True)
    try:
        assert scheduler.hold_lease()
        entry = scheduler.schedule["late"]
        key = f"late@{schedule_slot(entry).isoformat()}"
        settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 0  # the renewal before the publish: no time left
        with caplog.at_level("INFO", logger="djcelery_ops.schedules.scheduler"):
            scheduler.apply_entry(scheduler.reserve(entry))
    finally:
        settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 30
        scheduler.close()

    messages = [r.getMessage() for r in caplog.records]
    assert f"slot {key} (term" in "\n".join(messages)  # "sending ..."
    assert f"beat: slot {key} was not sent" in "\n".join(messages)
    assert not scheduler.is_leader
    assert drain(celery_queue) == []
    assert PeriodicTask.objects.get(name="late").last_run_at == before  # the next leader sends it
