"""The batched writer: upserts where the later state wins, whatever order batches come in."""

from __future__ import annotations

import datetime
import itertools
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from djcelery_ops.models import TaskRun
from djcelery_ops.runs import receivers
from djcelery_ops.runs import recorder as recorder_module
from djcelery_ops.runs.merge import merge_events
from djcelery_ops.runs.models import ATTEMPT_STRIDE
from djcelery_ops.runs.recorder import RunRecorder
from djcelery_ops.runs.sql import write_runs
from djcelery_ops.wire import call_digest
from tests.utils import wait_until

pytestmark = pytest.mark.django_db
State = TaskRun.State
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def event(state: str, retries: int = 0, **columns):
    rank = TaskRun.RANKS[State(state)]
    return {
        "task_id": "t1",
        "state": state,
        "retries": retries,
        "progress": retries * ATTEMPT_STRIDE + rank,
        **columns,
    }


RECEIVED = event(State.RECEIVED, task_name="shop.charge", queue="q", received_at=at(0))
STARTED = event(State.STARTED, worker_hostname="w1", started_at=at(1), received_at=at(1))
SUCCEEDED = event(State.SUCCEEDED, runtime=2.5, finished_at=at(3.5))


@pytest.mark.parametrize("order", list(itertools.permutations([RECEIVED, STARTED, SUCCEEDED])))
def test_batches_in_any_order__end_in_the_latest_state_with_every_column(order):
    for one in order:
        write_runs([one])
    run = TaskRun.objects.get(task_id="t1")
    assert run.state == State.SUCCEEDED
    assert (run.task_name, run.queue, run.worker_hostname) == ("shop.charge", "q", "w1")
    assert (run.received_at, run.started_at, run.finished_at) == (at(0), at(1), at(3.5))
    assert run.runtime == 2.5


@pytest.mark.parametrize("order", list(itertools.permutations([RECEIVED, STARTED, SUCCEEDED])))
def test_merge_in_memory__gives_what_the_database_upsert_gives(order):
    merged = order[0]
    for one in order[1:]:
        merged = merge_events(merged, one)
    write_runs([merged])
    run = TaskRun.objects.values(*merged).get()
    assert run == merged


def test_second_attempt__replaces_the_first_attempts_error_and_keeps_first_receipt():
    write_runs([merge_events(RECEIVED, STARTED)])
    retry = event(State.RETRY, exception_class="TransientError", exception_message="503")
    second = event(State.RECEIVED, retries=1, received_at=at(10))
    done = event(State.SUCCEEDED, retries=1, finished_at=at(12), runtime=0.5)
    write_runs([done])
    write_runs([retry])  # the first attempt's retry arrives last
    write_runs([second])
    run = TaskRun.objects.get()
    assert (run.state, run.retries, run.exception_class) == (State.SUCCEEDED, 1, "")
    assert run.received_at == at(0)
    assert run.finished_at == at(12)


def test_dead_lettered__wins_over_failed_and_keeps_the_exception():
    failed = event(State.FAILED, exception_class="builtins.ValueError", finished_at=at(2))
    dead = event(State.DEAD_LETTERED, exception_class="builtins.ValueError", finished_at=at(3))
    write_runs([dead])
    write_runs([failed])
    run = TaskRun.objects.get()
    assert run.state == State.DEAD_LETTERED
    assert run.exception_class == "builtins.ValueError"


def test_one_batch__is_one_statement_for_hundreds_of_runs():
    events = [{**SUCCEEDED, "task_id": f"t{i}"} for i in range(300)]
    with CaptureQueriesContext(connection) as queries:
        assert write_runs(events) == 300
    assert len(queries) == 1
    assert TaskRun.objects.succeeded().count() == 300


def test_recorder__merges_events_of_one_task_id_and_flushes_them_together():
    recorder = unstarted_recorder()
    for one in (SUCCEEDED, RECEIVED, STARTED):
        recorder.add(one)
    assert recorder.pending == 1
    assert recorder.flush() == 1
    assert recorder.pending == 0
    assert TaskRun.objects.get().state == State.SUCCEEDED
    assert recorder.flush() == 0


def rename_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")


@pytest.mark.django_db(transaction=True)
def test_recorder__keeps_the_batch_while_the_table_is_unreachable_then_writes_it():
    recorder = unstarted_recorder()
    recorder.add(RECEIVED)
    rename_table("djcelery_ops_taskrun", "djcelery_ops_taskrun_away")
    try:
        assert recorder.flush() == 0
        assert recorder.pending == 1
    finally:
        rename_table("djcelery_ops_taskrun_away", "djcelery_ops_taskrun")
    recorder.add(STARTED)
    assert recorder.flush() == 1
    assert TaskRun.objects.get().state == State.STARTED


@pytest.mark.django_db(transaction=True)
def test_recorder__drops_a_batch_the_database_refuses_and_goes_on():
    recorder = unstarted_recorder()
    recorder.add({**RECEIVED, "progress": -1})  # violates the column's check constraint
    assert recorder.flush() == 0
    assert recorder.pending == 0
    recorder.add(STARTED)
    assert recorder.flush() == 1


def unstarted_recorder() -> RunRecorder:
    return RunRecorder(start_writer=False)  # flushes are the test's


@pytest.mark.django_db(transaction=True)
def test_held_receipt__is_written_only_if_still_waiting_a_flush_interval_later(settings):
    settings.DJCELERY_OPS_RUNS_FLUSH_INTERVAL = 0.3
    recorder, waiting = unstarted_recorder(), {"t1"}
    recorder.hold(RECEIVED, waiting.__contains__)
    assert recorder.flush() == 0  # not due yet: a task that starts now costs no write
    assert recorder.held == 1 and not TaskRun.objects.exists()
    time.sleep(0.35)
    assert recorder.flush() == 1
    assert recorder.held == 0
    run = TaskRun.objects.get()
    assert (run.state, run.received_at, run.task_name) == (State.RECEIVED, at(0), "shop.charge")


@pytest.mark.django_db(transaction=True)
def test_held_receipt__of_a_task_that_moved_on__is_dropped(settings):
    settings.DJCELERY_OPS_RUNS_FLUSH_INTERVAL = 0
    recorder, waiting = unstarted_recorder(), {"t1"}
    recorder.hold(RECEIVED, waiting.__contains__)
    waiting.clear()  # a pool process accepted it; that process writes the row
    recorder.add(STARTED)
    assert recorder.flush() == 1
    assert recorder.held == 0
    run = TaskRun.objects.get()
    assert (run.state, run.received_at, run.queue) == (State.STARTED, at(1), "")


@pytest.mark.django_db(transaction=True)
def test_held_receipts__still_waiting_at_close__are_written_at_once(settings):
    settings.DJCELERY_OPS_RUNS_FLUSH_INTERVAL = 60
    recorder = unstarted_recorder()
    recorder.hold(RECEIVED, lambda task_id: True)
    recorder.hold({**RECEIVED, "task_id": "t2"}, lambda task_id: False)
    assert recorder.flush(everything=True) == 1
    assert list(TaskRun.objects.values_list("task_id", "state")) == [("t1", State.RECEIVED)]


class FakeRequest:
    """What ``celery.worker.state`` needs of a request: an id and a name."""

    def __init__(self, task_id: str) -> None:
        self.id, self.name = task_id, "shop.charge"


def test_still_waiting__follows_celerys_worker_state():
    from celery.worker import state

    request = FakeRequest("waiting-1")
    assert not receivers.still_waiting(request.id)  # unknown to this worker
    state.task_reserved(request)
    assert receivers.still_waiting(request.id)  # prefetched, no pool process has it
    state.task_accepted(request)
    assert not receivers.still_waiting(request.id)  # running
    state.task_ready(request)
    assert not receivers.still_waiting(request.id)


@pytest.mark.django_db(transaction=True)
def test_recorder__drops_only_the_rows_the_database_refuses():
    recorder = unstarted_recorder()
    recorder.add({**SUCCEEDED, "task_id": "good-1"})
    recorder.add({**SUCCEEDED, "task_id": "bad", "progress": -1})  # violates a check constraint
    recorder.add({**SUCCEEDED, "task_id": "good-2"})
    assert recorder.flush() == 2
    assert sorted(TaskRun.objects.values_list("task_id", flat=True)) == ["good-1", "good-2"]
    assert recorder.pending == 0


@pytest.mark.django_db(transaction=True)
def test_recorder__a_nul_byte_loses_at_most_its_own_row():
    recorder = unstarted_recorder()
    recorder.add({**SUCCEEDED, "task_id": "good-1"})
    recorder.add({**SUCCEEDED, "task_id": "nul", "exception_message": "bad\x00byte"})
    recorder.add({**SUCCEEDED, "task_id": "good-2"})
    written = recorder.flush()  # PostgreSQL refuses NUL in text, SQLite stores it
    task_ids = set(TaskRun.objects.values_list("task_id", flat=True))
    assert {"good-1", "good-2"} <= task_ids
    assert written == len(task_ids)


def test_write__round_trips_text_that_array_literals_would_have_to_escape():
    hostile = "a\"b\\c{d},e NULL 'f' \u2603\n)"
    write_runs([{**RECEIVED, "exception_message": hostile, "task_name": "NULL", "tenant": "{}"}])
    run = TaskRun.objects.get()
    assert (run.exception_message, run.task_name, run.tenant) == (hostile, "NULL", "{}")


def test_write__cuts_text_longer_than_its_column():
    write_runs([{**RECEIVED, "task_name": "x" * 300}])
    assert TaskRun.objects.get().task_name == "x" * 255


def test_receivers__record_nothing_outside_a_worker(settings):
    assert receivers._active is False
    assert receivers._records(object()) is False


def test_receivers__record_ops_tasks_or_every_task_by_setting(settings, monkeypatch):
    from tests.testapp import tasks

    monkeypatch.setattr(receivers, "_active", True)
    assert receivers._records(tasks.ops_add)
    assert not receivers._records(tasks.plain_add)
    settings.DJCELERY_OPS_RUNS_ALL_TASKS = True
    assert receivers._records(tasks.plain_add)
    settings.DJCELERY_OPS_RUNS_ENABLED = False
    assert not receivers._records(tasks.ops_add)


def test_call_digest__is_stable_and_tells_calls_apart():
    assert call_digest([1], {"a": 2}) == call_digest((1,), {"a": 2})
    assert call_digest([1], {"a": 2}) != call_digest([1], {"a": 3})


@pytest.mark.django_db(transaction=True)
def test_writer__survives_an_unexpected_error_and_writes_the_batch_later(settings, monkeypatch):
    settings.DJCELERY_OPS_RUNS_FLUSH_INTERVAL = 0.05
    real_write, calls = recorder_module.write_runs, []

    def write_once_broken(events):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not a database error: the writer must go on")
        return real_write(events)

    monkeypatch.setattr(recorder_module, "write_runs", write_once_broken)
    recorder = RunRecorder()
    try:
        recorder.add(RECEIVED)
        wait_until(lambda: TaskRun.objects.filter(task_id="t1").exists(), timeout=10)
        assert recorder._thread is not None and recorder._thread.is_alive()
        assert len(calls) >= 2 and recorder.dropped == 0
    finally:
        recorder.close()


def test_buffer__is_bounded_and_counts_what_it_drops(settings):
    settings.DJCELERY_OPS_RUNS_BATCH_SIZE = 5  # a buffer of 20 batches: 100 task ids
    recorder = unstarted_recorder()
    for number in range(150):
        recorder.add({**RECEIVED, "task_id": f"t{number}"})
    recorder.add({**STARTED, "task_id": "t0"})  # a known task id still merges
    assert (recorder.pending, recorder.dropped) == (100, 50)
