"""Daily partitions of the job-run table: convert, record, copy, create ahead, purge by drop.

PostgreSQL only (table partitioning). Each test converts the table inside its own test
transaction: PostgreSQL's DDL is transactional, so the rollback puts the plain table back.
"""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from djcelery_ops.models import TaskRun
from djcelery_ops.runs import partitions
from djcelery_ops.runs.sql import write_runs

pytestmark = pytest.mark.django_db
State = TaskRun.State


@pytest.fixture
def postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): SQLite has no table partitioning")
    yield
    partitions.forget_layout()


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("partition_task_runs", *args, stdout=out)
    return out.getvalue()


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_task_runs", *args, stdout=out)
    return out.getvalue()


def today() -> datetime.date:
    return partitions.today()


def day(offset: int) -> datetime.date:
    return today() + datetime.timedelta(days=offset)


def recorded_on(task_id: str) -> list[datetime.date]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT recorded_on FROM djcelery_ops_taskrun WHERE task_id = %s", [task_id])
        return [row[0] for row in cursor.fetchall()]


def move(task_ids: list[str], to: datetime.date) -> None:
    """Put runs in the partition of day ``to`` (an UPDATE of the key moves the rows)."""
    partitions.create_partitions(to, to)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE djcelery_ops_taskrun SET recorded_on = %s WHERE task_id = ANY(%s)",
            [to, task_ids],
        )


def started(task_id: str, **columns) -> dict:
    now = timezone.now()
    return {
        "task_id": task_id,
        "state": "started",
        "progress": 20,
        "retries": 0,
        "started_at": now,
        **columns,
    }


def succeeded(task_id: str) -> dict:
    return {"task_id": task_id, "state": "succeeded", "progress": 40, "retries": 0, "runtime": 0.5}


def test_convert__dry_run_prints_the_sql_and_changes_nothing(postgresql):
    output = run("--convert", "--dry-run", "--days-ahead", "2").splitlines()
    assert output[0] == "Would run, in one transaction:"
    assert output[1] == 'LOCK TABLE "djcelery_ops_taskrun" IN ACCESS EXCLUSIVE MODE;'
    assert any(line.endswith('PARTITION BY RANGE ("recorded_on");') for line in output)
    assert output[-1].startswith(
        f'CREATE TABLE IF NOT EXISTS "djcelery_ops_taskrun_p{day(2):%Y%m%d}"'
    )
    assert sum(line.startswith("CREATE TABLE IF NOT EXISTS") for line in output) == 4
    assert not partitions.is_partitioned()


def test_convert__swaps_the_table_and_keeps_the_old_rows_aside(postgresql):
    before = TaskRun.objects.create(task_id="before", state=State.SUCCEEDED)
    assert run("--convert", "--days-ahead", "3") == (
        "Converted djcelery_ops_taskrun to daily partitions (5 created); its rows wait in "
        "djcelery_ops_taskrun_unpartitioned: move them with --copy-unpartitioned.\n"
    )
    assert partitions.is_partitioned()
    assert [p.start for p in partitions.partitions()] == [day(n) for n in range(-1, 4)]
    assert TaskRun.objects.count() == 0
    # The ORM writes into today's partition, with ids after the old table's.
    row = TaskRun.objects.create(task_id="after", state=State.RECEIVED)
    assert recorded_on("after") == [today()]
    assert row.pk > before.pk
    with pytest.raises(CommandError, match="already partitioned"):
        run("--convert")


def test_convert__needs_an_unpartitioned_table_first(postgresql):
    with pytest.raises(CommandError, match="is not partitioned: run with --convert first"):
        run("--days-ahead", "3")


def test_recorder__merges_an_event_into_the_row_of_its_task_id_from_an_earlier_day(postgresql):
    run("--convert", "--days-ahead", "1")
    write_runs([started("t-1", task_name="app.a"), started("t-2")])
    assert recorded_on("t-1") == [today()]
    move(["t-1"], day(-3))  # received three days ago, an ETA task say
    write_runs([succeeded("t-1"), succeeded("t-2")])
    assert recorded_on("t-1") == [day(-3)]
    run_1 = TaskRun.objects.get(task_id="t-1")
    assert (run_1.state, run_1.task_name, run_1.runtime) == ("succeeded", "app.a", 0.5)
    assert TaskRun.objects.get(task_id="t-2").state == "succeeded"
    assert TaskRun.objects.count() == 2


def test_recorder__a_row_older_than_the_lookback_gets_a_second_row(postgresql, settings):
    """The documented limit: set the lookback above the longest ETA wait plus run time."""
    settings.DJCELERY_OPS_RUNS_PARTITION_LOOKBACK_DAYS = 2
    run("--convert", "--days-ahead", "1")
    write_runs([started("late")])
    move(["late"], day(-3))
    write_runs([succeeded("late")])
    assert sorted(recorded_on("late")) == [day(-3), today()]


def test_copy_unpartitioned__moves_old_rows_by_day_and_merges_a_task_seen_since(postgresql):
    old = timezone.now() - datetime.timedelta(days=5)
    write_runs([started("old-1", received_at=old), started("old-2", received_at=old)])
    TaskRun.objects.create(task_id="waiting", state=State.RECEIVED)
    run("--convert", "--days-ahead", "1")
    write_runs([succeeded("old-2")])  # finished after the conversion: a row of today
    assert run("--copy-unpartitioned", "--dry-run") == (
        "Would copy 3 task runs from djcelery_ops_taskrun_unpartitioned, then drop it.\n"
    )
    assert run("--copy-unpartitioned", "--batch-size", "2") == (
        "Copied 2/3 task runs so far.\n"
        "Copied 3/3 task runs so far.\n"
        "Copied 3 task runs from djcelery_ops_taskrun_unpartitioned; dropped it.\n"
    )
    assert recorded_on("old-1") == [day(-5)]
    assert recorded_on("old-2") == [today()]
    merged = TaskRun.objects.get(task_id="old-2")
    assert (merged.state, merged.runtime, merged.received_at is not None) == (
        "succeeded",
        0.5,
        True,
    )
    assert TaskRun.objects.count() == 3
    assert not partitions.unpartitioned_left()
    assert run("--copy-unpartitioned") == (
        "Nothing to copy: no table djcelery_ops_taskrun_unpartitioned.\n"
    )


def test_create_ahead__creates_only_the_missing_days(postgresql):
    run("--convert", "--days-ahead", "2")
    name = partitions.partition_name
    assert run("--days-ahead", "4", "--dry-run") == (
        f"Would create 2 partitions up to {day(4)} {name(day(3))}, {name(day(4))}.\n"
    )
    assert run("--days-ahead", "4") == f"Created 2 partitions up to {day(4)}.\n"
    assert run("--days-ahead", "4") == f"Nothing to create: no partitions up to {day(4)}.\n"


def test_purge__drops_old_partitions_and_deletes_in_batches_where_a_run_must_stay(postgresql):
    run("--convert", "--days-ahead", "1")
    now = timezone.now()
    ago = lambda days: now - datetime.timedelta(days=days)  # noqa: E731
    runs = [
        TaskRun(task_id=f"d30-{i}", state=State.SUCCEEDED, finished_at=ago(30)) for i in range(3)
    ]
    runs += [
        TaskRun(task_id=f"d29-{i}", state=State.SUCCEEDED, finished_at=ago(29)) for i in range(2)
    ]
    # Started 29 days ago, finished yesterday: its partition cannot go as a whole.
    runs += [
        TaskRun(task_id="d29-long", state=State.SUCCEEDED, started_at=ago(29), finished_at=ago(1))
    ]
    runs += [TaskRun(task_id="recent", state=State.SUCCEEDED, finished_at=ago(1))]
    TaskRun.objects.bulk_create(runs)
    move([f"d30-{i}" for i in range(3)], day(-30))
    move(["d29-0", "d29-1", "d29-long"], day(-29))
    partitions.create_partitions(day(-28), day(-28))  # an empty old day
    name = partitions.partition_name
    assert purge("--older-than", "14d", "--dry-run") == (
        f"Would drop partition {name(day(-30))} (3 task runs).\n"
        f"Would drop partition {name(day(-28))} (0 task runs).\n"
        "Would purge 5 task runs older than 14d.\n"
    )
    assert purge("--older-than", "14d", "--batch-size", "1") == (
        f"Dropped partition {name(day(-30))} (3 task runs).\n"
        f"Dropped partition {name(day(-28))} (0 task runs).\n"
        "Purged 4/5 task runs so far.\n"
        "Purged 5/5 task runs so far.\n"
        "Purged 5 task runs older than 14d.\n"
    )
    assert set(TaskRun.objects.values_list("task_id", flat=True)) == {"d29-long", "recent"}
    kept = [p.start for p in partitions.partitions()]
    assert day(-30) not in kept and day(-28) not in kept and day(-29) in kept
    assert purge("--older-than", "14d") == "Nothing to purge: no task runs older than 14d.\n"


def test_commands__refuse_sqlite_clearly():
    if connection.vendor == "postgresql":
        pytest.skip("the SQLite refusal is tested on SQLite")
    with pytest.raises(CommandError, match="Daily partitions need PostgreSQL"):
        run("--convert")
    assert not partitions.is_partitioned()


def test_purge__a_partition_whose_lock_is_not_granted_is_skipped_and_said(postgresql, monkeypatch):
    from django.db import OperationalError

    from djcelery_ops.runs import retention

    run("--convert", "--days-ahead", "1")
    TaskRun.objects.create(
        task_id="old",
        state=State.SUCCEEDED,
        finished_at=timezone.now() - datetime.timedelta(days=30),
    )
    move(["old"], day(-30))

    class LockNotAvailable(Exception):
        sqlstate = "55P03"

    def locked(partition):
        raise OperationalError("canceling statement due to lock timeout") from LockNotAvailable()

    monkeypatch.setattr(partitions, "drop_partition", locked)
    monkeypatch.setattr(retention.time, "sleep", lambda seconds: None)
    name = partitions.partition_name(day(-30))
    assert purge("--older-than", "14d") == (
        f"Skipped partition {name}: its lock was not granted within 1s, 3 times; "
        "run the command again later.\n"
        "Nothing to purge: no task runs older than 14d.\n"
    )
    assert recorded_on("old") == [day(-30)]


def test_recorder__creates_todays_partition_when_the_daily_command_did_not(postgresql):
    run("--convert", "--days-ahead", "1")
    today_partition = partitions.partition_name(today())
    with connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE "{today_partition}"')
    write_runs([started("t-1")])
    assert recorded_on("t-1") == [today()]
    assert today_partition in [p.name for p in partitions.partitions()]
