"""``manage.py purge_idempotency_keys``: exact output, dry run, batches, bad input."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from djcelery_ops.models import IdempotencyKey

pytestmark = pytest.mark.django_db

State = IdempotencyKey.State


def make_key(key: str, state: str, age: timedelta, **fields) -> IdempotencyKey:
    moment = timezone.now() - age
    defaults = {
        "task_name": "tests.task",
        "mode": IdempotencyKey.Mode.ATOMIC,
        "state": state,
        "created_at": moment,
        "completed_at": moment if state == State.DONE else None,
        "lease_expires_at": moment if state == State.RUNNING else None,
    }
    return IdempotencyKey.objects.create(key=key, **{**defaults, **fields})


@pytest.fixture
def keys():
    make_key("old-done", State.DONE, timedelta(days=40))
    make_key("old-failed", State.FAILED, timedelta(days=31))
    make_key("old-expired-lease", State.RUNNING, timedelta(days=35))
    make_key("new-done", State.DONE, timedelta(days=2))
    # A key created long ago whose lease is still held is in flight: never purged.
    make_key(
        "held",
        State.RUNNING,
        timedelta(days=50),
        lease_expires_at=timezone.now() + timedelta(hours=1),
    )


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_idempotency_keys", *args, stdout=out)
    return out.getvalue()


def remaining() -> list[str]:
    return sorted(IdempotencyKey.objects.values_list("key", flat=True))


def test_purge__dry_run_says_what_it_would_delete_and_deletes_nothing(keys):
    assert purge("--older-than", "30d", "--dry-run") == (
        "Would purge 3 idempotency keys older than 30d.\n"
    )
    assert len(remaining()) == 5


def test_purge__deletes_finished_keys_older_than_the_age_in_batches(keys):
    assert purge("--older-than", "30d", "--batch-size", "2") == (
        "Purged 2/3 idempotency keys so far.\n"
        "Purged 3/3 idempotency keys so far.\n"
        "Purged 3 idempotency keys older than 30d.\n"
    )
    assert remaining() == ["held", "new-done"]


def test_purge__nothing_to_delete_reads_the_same_in_the_dry_run_and_the_real_run(keys):
    expected = "Nothing to purge: no idempotency keys older than 8w.\n"
    assert purge("--older-than", "8w", "--dry-run") == expected
    assert purge("--older-than", "8w") == expected
    assert len(remaining()) == 5


def test_purge__one_key_is_singular(keys):
    assert purge("--older-than", "39d") == (
        "Purged 1/1 idempotency key so far.\nPurged 1 idempotency key older than 39d.\n"
    )
    assert "old-done" not in remaining()


@pytest.mark.parametrize("age", ["banana", "30", "d30", "-1d", "3.5h", ""])
def test_purge__bad_age_is_a_command_error(keys, age):
    with pytest.raises(CommandError, match="is not a positive duration such as 90s"):
        purge(f"--older-than={age}")
    assert len(remaining()) == 5


def test_purge__batch_size_below_one_is_a_command_error(keys):
    with pytest.raises(CommandError, match="--batch-size must be at least 1, not 0."):
        purge("--older-than", "30d", "--batch-size", "0")


def test_purge__older_than_is_required():
    with pytest.raises(CommandError, match="--older-than"):
        purge()
