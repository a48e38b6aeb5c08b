"""The TaskRun query API and per-task statistics, on the test database."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.utils import timezone

from djcelery_ops.models import TaskRun
from djcelery_ops.runs import stats as runs_stats
from djcelery_ops.runs.stats import distinct_values, percentile
from tests.factories import dead_letter

pytestmark = pytest.mark.django_db
State = TaskRun.State


def make_run(task_id: str, state: str = State.SUCCEEDED, **fields) -> TaskRun:
    now = timezone.now()
    defaults = {
        "task_name": "shop.charge",
        "received_at": now - datetime.timedelta(minutes=5),
        "started_at": now - datetime.timedelta(minutes=4),
    }
    if state in TaskRun.FINISHED_STATES:
        defaults["finished_at"] = now - datetime.timedelta(minutes=3)
    return TaskRun.objects.create(task_id=task_id, state=state, **{**defaults, **fields})


def ids(queryset) -> set[str]:
    return set(queryset.values_list("task_id", flat=True))


def test_state_filters__split_runs_by_outcome():
    make_run("ok")
    make_run("bad", State.FAILED)
    make_run("dead", State.DEAD_LETTERED)
    make_run("busy", State.STARTED)
    make_run("waiting", State.RECEIVED)
    assert ids(TaskRun.objects.succeeded()) == {"ok"}
    assert ids(TaskRun.objects.failed()) == {"bad", "dead"}
    assert ids(TaskRun.objects.running()) == {"busy"}


def test_for_task_and_since__accept_a_timedelta_or_a_datetime():
    now = timezone.now()
    make_run("new", received_at=now - datetime.timedelta(minutes=10))
    make_run("old", received_at=now - datetime.timedelta(days=2))
    make_run("other", task_name="shop.refund")
    assert ids(TaskRun.objects.since(datetime.timedelta(hours=1))) == {"new", "other"}
    assert ids(TaskRun.objects.since(now - datetime.timedelta(days=3))) == {"new", "old", "other"}
    assert ids(TaskRun.objects.for_task("shop.charge").since(datetime.timedelta(hours=1))) == {
        "new"
    }


def test_stuck__is_started_unfinished_and_older_than_the_bound():
    now = timezone.now()
    make_run("long", State.STARTED, started_at=now - datetime.timedelta(hours=3))
    make_run("fresh", State.STARTED, started_at=now - datetime.timedelta(minutes=1))
    make_run("done", State.SUCCEEDED, started_at=now - datetime.timedelta(hours=3))
    assert ids(TaskRun.objects.stuck(older_than=datetime.timedelta(hours=2))) == {"long"}
    assert ids(TaskRun.objects.stuck(older_than=datetime.timedelta(seconds=10))) == {
        "long",
        "fresh",
    }


def test_stats__per_task_counts_failure_rate_and_runtime_percentiles():
    for i, runtime in enumerate([1.0, 2.0, 3.0, 4.0]):
        make_run(f"c{i}", runtime=runtime)
    make_run("c-failed", State.DEAD_LETTERED, runtime=10.0)
    make_run("r1", State.FAILED, task_name="shop.refund")
    make_run("old", received_at=timezone.now() - datetime.timedelta(days=3), runtime=99.0)
    charge, refund = TaskRun.objects.stats(window=datetime.timedelta(days=1))
    assert charge["task_name"] == "shop.charge"
    assert (charge["runs"], charge["failures"]) == (5, 1)
    assert charge["failure_rate"] == pytest.approx(0.2)
    assert charge["p50"] == pytest.approx(3.0)
    assert charge["p95"] == pytest.approx(8.8)  # between 4.0 and 10.0, as percentile_cont
    assert charge["max_runtime"] == pytest.approx(10.0)
    assert refund == {
        "task_name": "shop.refund",
        "runs": 1,
        "failures": 1,
        "failure_rate": 1.0,
        "p50": None,
        "p95": None,
        "max_runtime": None,
    }


def test_stats__python_fallback_gives_what_the_database_gives():
    for i, runtime in enumerate([0.5, 0.25, 2.0, 8.0, 1.0]):
        make_run(f"c{i}", runtime=runtime, state=State.FAILED if i == 2 else State.SUCCEEDED)
    in_python = runs_stats._aggregate_in_python(TaskRun.objects.all())
    assert in_python[0]["p50"] == pytest.approx(1.0)
    if connection.vendor == "postgresql":
        in_database = runs_stats._aggregate_in_database(TaskRun.objects.all())
        assert len(in_database) == len(in_python) == 1
        assert in_database[0] == pytest.approx(in_python[0])


def test_percentile__interpolates_like_percentile_cont():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)


def test_distinct_values__lists_each_non_empty_value_once():
    make_run("a", queue="default")
    make_run("b", queue="mail")
    make_run("c", queue="default", task_name="shop.refund")
    make_run("d", queue="")
    assert distinct_values("queue") == ["default", "mail"]
    assert distinct_values("task_name") == ["shop.charge", "shop.refund"]
    with pytest.raises(ValueError, match="no distinct scan"):
        distinct_values("exception_message")


def test_dead_letter__is_joined_on_the_task_id():
    run = make_run("x", State.DEAD_LETTERED)
    assert run.dead_letter is None
    letter = dead_letter(task_id="x")
    assert run.dead_letter == letter
