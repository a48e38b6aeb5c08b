"""``manage.py purge_task_runs``: retention in batches, with exact output."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
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
