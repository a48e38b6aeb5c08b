"""``manage.py purge_task_runs``: retention in batches, with exact output."""

from __future__ import annotations

import datetime
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from djcelery_ops.models import TaskRun

pytestmark = pytest.mark.django_db
State = TaskRun.State


@pytest.fixture
def runs():
    now = timezone.now()
    old, new = now - datetime.timedelta(days=20), now - datetime.timedelta(days=1)
    rows = [TaskRun(task_id=f"old-{i}", state=State.SUCCEEDED, finished_at=old) for i in range(5)]
    rows += [
        TaskRun(task_id="old-stuck", state=State.STARTED, started_at=old, received_at=old),
        TaskRun(task_id="old-waiting", state=State.RECEIVED, received_at=old),
        TaskRun(task_id="new-done", state=State.SUCCEEDED, finished_at=new, received_at=old),
        TaskRun(task_id="new-running", state=State.STARTED, started_at=new, received_at=old),
        TaskRun(task_id="unknown-age", state=State.RECEIVED),
    ]
    TaskRun.objects.bulk_create(rows)


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_task_runs", *args, stdout=out)
    return out.getvalue()


def remaining() -> set[str]:
    return set(TaskRun.objects.values_list("task_id", flat=True))


def test_purge__deletes_old_runs_in_batches_with_progress(runs):
    output = purge("--older-than", "14d", "--batch-size", "3")
    assert output == (
        "Purged 3/7 task runs so far.\n"
        "Purged 6/7 task runs so far.\n"
        "Purged 7/7 task runs so far.\n"
        "Purged 7 task runs older than 14d.\n"
    )
    assert remaining() == {"new-done", "new-running", "unknown-age"}


def test_purge__dry_run_counts_and_deletes_nothing(runs):
    assert purge("--older-than", "2w", "--dry-run") == "Would purge 7 task runs older than 2w.\n"
    assert len(remaining()) == 10


def test_purge__nothing_old_enough_reads_the_same_in_the_dry_run_and_the_real_run(runs):
    expected = "Nothing to purge: no task runs older than 30d.\n"
    assert purge("--older-than", "30d", "--dry-run") == expected
    assert purge("--older-than", "30d") == expected
    assert len(remaining()) == 10


@pytest.mark.parametrize("value", ["14", "fortnight", "0d", "-3d", "14y"])
def test_purge__bad_duration_is_a_command_error(value):
    with pytest.raises(CommandError, match="is not a positive duration such as 90s"):
        purge(f"--older-than={value}")


def test_purge__bad_batch_size_is_a_command_error():
    with pytest.raises(CommandError, match="--batch-size must be at least 1, not 0."):
        purge("--older-than", "14d", "--batch-size", "0")


def test_purge__verbosity_2_adds_the_rate_and_the_longest_batch(runs):
    out = io.StringIO()
    call_command("purge_task_runs", "--older-than=14d", "--batch-size=4", verbosity=2, stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == [
        "Purged 4/7 task runs so far",
        "Purged 7/7 task runs so far",
    ]
    assert all(re.search(r"\([\d,]+ rows/s, longest batch \d+\.\d{3} s\)\.$", x) for x in lines[:2])
    assert lines[2] == "Purged 7 task runs older than 14d."
    assert re.fullmatch(
        r"Took \d+\.\d s: [\d,]+ rows/s, 2 batches, longest batch \d+\.\d{3} s\.", lines[3]
    )


def stop_after_first_batch(monkeypatch, error: BaseException) -> None:
    """The purge loses the database (or gets Ctrl-C) once its first batch is committed."""
    from djcelery_ops.management import base

    real = base.delete_in_batches

    def stopping(*args, **kwargs):
        for count in real(*args, **kwargs):
            yield count
            raise error

    monkeypatch.setattr(base, "delete_in_batches", stopping)


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (KeyboardInterrupt(), 4, "Interrupted: 3 task runs older than 14d purged; each batch"),
        (
            OperationalError("server closed the connection unexpectedly\nmore"),
            5,
            "Stopped: the database is unreachable (server closed the connection unexpectedly). "
            "3 task runs older than 14d purged;",
        ),
    ],
)
def test_purge__stopped_mid_run_keeps_committed_batches_and_says_how_many(
    runs, monkeypatch, error, code, message
):
    stop_after_first_batch(monkeypatch, error)
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("purge_task_runs", "--older-than=14d", "--batch-size=3", stdout=out)
    assert caught.value.returncode == code
    assert str(caught.value).startswith(message)
    assert out.getvalue() == "Purged 3/7 task runs so far.\n"
    assert len(remaining()) == 7


def test_delete_in_batches__walks_the_keys_once_and_keeps_rows_that_stop_matching(runs):
    """Keyset pages over the filtered rows: a row that stopped matching stays."""
    from djcelery_ops.db import BatchedDelete, delete_in_batches

    old = TaskRun.objects.filter(task_id__startswith="old-").order_by("pk")
    first_ids = list(old.values_list("pk", flat=True))
    stats = BatchedDelete()
    batches = delete_in_batches(old, 2, stats)
    assert next(batches) == 2
    # Between batches, a run of the next page is renamed: it no longer matches.
    TaskRun.objects.filter(pk=first_ids[2]).update(task_id="renamed")
    assert list(batches) == [4, 6]
    assert stats.deleted == 6 and stats.batches == 3
    assert "renamed" in remaining()


def test_next_batch_size__halves_after_a_slow_batch_and_grows_back_to_the_most_asked():
    from djcelery_ops.db import BATCH_SECONDS_TARGET, next_batch_size

    slow, quick, fair = BATCH_SECONDS_TARGET * 2, BATCH_SECONDS_TARGET / 8, BATCH_SECONDS_TARGET
    assert next_batch_size(10_000, slow, 10_000) == 5_000
    assert next_batch_size(1, slow, 10_000) == 1
    assert next_batch_size(5_000, fair, 10_000) == 5_000
    assert next_batch_size(5_000, quick, 10_000) == 10_000
    assert next_batch_size(8_000, quick, 10_000) == 10_000
