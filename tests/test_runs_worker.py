"""Every lifecycle state of a job run, recorded by a real prefork worker."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import pytest
from django.utils import timezone

from djcelery_ops.models import DeadLetter, TaskRun
from tests.testapp import tasks
from tests.utils import wait_until
from tests.worker import purge_queue

pytestmark = pytest.mark.worker

State = TaskRun.State
RUNS_SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.test_runs_settings"}


@pytest.fixture
def runs_worker(start_worker):
    return start_worker(env=RUNS_SETTINGS)


def run_in_state(task_id: str, *states: str, timeout: float = 30) -> TaskRun:
    return wait_until(
        lambda: TaskRun.objects.filter(task_id=task_id, state__in=states).first(),
        timeout=timeout,
        what=f"run {task_id} in state {states}",
    )


@pytest.fixture
def go_file(tmp_path) -> Path:
    return tmp_path / "go"


def test_received_then_started_then_succeeded__with_timestamps_runtime_and_routing(
    runs_worker, celery_queue, go_file
):
    result = tasks.ops_wait_for.apply_async((str(go_file),), headers={"tenant": "acme"})
    run = run_in_state(result.id, State.STARTED)
    assert run.received_at is not None and run.started_at is not None
    assert run.received_at <= run.started_at
    assert run.finished_at is None
    assert TaskRun.objects.running().filter(task_id=result.id).exists()
    go_file.touch()
    run = run_in_state(result.id, State.SUCCEEDED)
    assert run.task_name == "tests.testapp.tasks.ops_wait_for"
    assert run.started_at <= run.finished_at
    assert run.runtime is not None and run.runtime > 0
    assert run.queue == celery_queue
    assert run.tenant == "acme"
    assert run.worker_hostname.startswith("djops-")
    assert len(run.args_digest) == 64
    assert run.args is None and run.kwargs is None  # not stored unless a setting says so
    assert run.retries == 0 and run.exception_class == ""
    assert run.root_id == run.parent_id == ""  # its own root: kept out of the lineage indexes


def test_task_waiting_behind_a_busy_worker__is_recorded_as_received_then_runs(
    start_worker, celery_queue, go_file
):
    start_worker(env=RUNS_SETTINGS, concurrency=1)
    blocker = tasks.ops_wait_for.delay(str(go_file))
    run_in_state(blocker.id, State.STARTED)
    waiting = tasks.ops_add.delay(1, 2)  # prefetched by the main process, no free child
    run = run_in_state(waiting.id, State.RECEIVED)
    assert run.started_at is None and run.task_name == "tests.testapp.tasks.ops_add"
    go_file.touch()
    run = run_in_state(waiting.id, State.SUCCEEDED)
    # The child wrote the receipt time the main process stamped, not its own start.
    assert run.started_at - run.received_at >= datetime.timedelta(seconds=0.2)


def test_task_waiting_for_its_eta__is_recorded_as_received(runs_worker):
    result = tasks.ops_add.apply_async((1, 2), countdown=600)
    run = run_in_state(result.id, State.RECEIVED)
    assert run.started_at is None
    assert run.task_name == "tests.testapp.tasks.ops_add"


def test_retry__is_recorded_with_its_reason(runs_worker):
    nowhere = f"djops-nowhere-{uuid.uuid4().hex[:8]}"
    try:
        result = tasks.ops_retry_elsewhere.delay(nowhere)
        run = run_in_state(result.id, State.RETRY)
        assert run.exception_class == "djcelery_ops.exceptions.TransientError"
        assert run.exception_message == "try later"
        assert run.finished_at is None
    finally:
        purge_queue(nowhere)


def test_retry_then_success__ends_succeeded_with_the_retry_count(runs_worker):
    result = tasks.ops_transient_once.delay("runs-once")
    run = run_in_state(result.id, State.SUCCEEDED)
    assert run.retries == 1
    assert run.exception_class == ""  # the successful attempt replaced the first one's error


def test_final_failure_of_an_ops_task__is_dead_lettered(runs_worker):
    result = tasks.ops_raise.delay("card declined")
    run = run_in_state(result.id, State.DEAD_LETTERED)
    assert run.exception_class == "builtins.ValueError"
    assert run.exception_message == "card declined"
    assert run.finished_at is not None
    assert run.dead_letter == DeadLetter.objects.get(task_id=result.id)
    assert TaskRun.objects.failed().filter(task_id=result.id).exists()


def test_hard_time_limit__is_dead_lettered_from_the_main_process(runs_worker):
    result = tasks.ops_hard_limit.delay()
    run = run_in_state(result.id, State.DEAD_LETTERED)
    assert run.exception_class == "billiard.exceptions.TimeLimitExceeded"
    assert run.started_at is not None


def test_failure_without_dead_letter__is_recorded_as_failed(runs_worker):
    result = tasks.ops_fail_without_dead_letter.delay("no letter")
    run = run_in_state(result.id, State.FAILED)
    assert run.exception_class == "builtins.ValueError"
    assert run.exception_message == "no letter"
    assert run.finished_at is not None and run.runtime is not None
    assert run.dead_letter is None


def test_expired_message__is_recorded_as_revoked(runs_worker):
    result = tasks.ops_add.apply_async((1, 2), expires=timezone.now() - datetime.timedelta(1))
    run = run_in_state(result.id, State.REVOKED)
    assert run.exception_message == "expired"
    assert run.started_at is None


def test_child_task__records_its_parent_and_root(runs_worker):
    parent = tasks.ops_spawn_child.delay()
    child = wait_until(
        lambda: TaskRun.objects.filter(parent_id=parent.id, state=State.SUCCEEDED).first(),
        what="the child run",
    )
    assert child.root_id == parent.id
    assert child.task_name == "tests.testapp.tasks.ops_add"


def test_plain_tasks__are_recorded_only_with_runs_all_tasks(start_worker):
    start_worker(env={**RUNS_SETTINGS, "DJCELERY_OPS_RUNS_ALL_TASKS": "1"})
    recorded = tasks.plain_add.delay(1, 1)
    run_in_state(recorded.id, State.SUCCEEDED)


def test_plain_tasks__are_not_recorded_by_default(runs_worker):
    plain = tasks.plain_add.delay(1, 1)
    ops = tasks.ops_add.delay(1, 1)
    run_in_state(ops.id, State.SUCCEEDED)
    wait_until(lambda: plain.id in runs_worker.log(), what="the plain task to run")
    assert not TaskRun.objects.filter(task_id=plain.id).exists()


def test_store_args_setting__keeps_the_arguments(start_worker):
    start_worker(env={**RUNS_SETTINGS, "DJCELERY_OPS_RUNS_STORE_ARGS": "1"})
    result = tasks.ops_add.apply_async((4,), {"y": 5})
    run = run_in_state(result.id, State.SUCCEEDED)
    assert (run.args, run.kwargs) == ([4], {"y": 5})


def test_last_batch__is_written_at_warm_shutdown(start_worker):
    worker = start_worker(
        env={**RUNS_SETTINGS, "DJCELERY_OPS_RUNS_FLUSH_INTERVAL": "600"}, concurrency=1
    )
    results = [tasks.ops_add.delay(i, i) for i in range(3)]
    wait_until(
        lambda: all(f"{r.id}] succeeded" in worker.log() for r in results),
        what="the three tasks to succeed",
    )
    assert not TaskRun.objects.exists()  # nothing flushed yet: the interval is 10 minutes
    worker.stop()
    states = set(TaskRun.objects.values_list("state", flat=True))
    assert states == {State.SUCCEEDED}
    assert TaskRun.objects.filter(received_at__isnull=False).count() == 3
