"""``unique_for`` with a real worker: the enqueue lock ends with the message, whatever its
fate. After each way a message can end without running, a new ``apply_async`` publishes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from djcelery_ops.idempotency.unique import PendingDuplicate
from djcelery_ops.models import DeadLetter, EnqueueLock
from djcelery_ops.task.base import OpsTask
from tests.celery_app import app as celery_app
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = pytest.mark.worker


@celery_app.task(base=OpsTask, unique_for=60, name="tests.unique_unknown_to_the_worker")
def unique_unknown_to_the_worker(report: str) -> str:
    """Registered in the test process only: the worker does not know it."""
    return report


def _lock_released(task_id: str) -> bool:
    return not EnqueueLock.objects.filter(task_id=task_id).exists()


def _publishes_again(task, report: str, pending_id: str) -> None:
    wait_until(lambda: _lock_released(pending_id), timeout=30, what="the lock to be released")
    again = task.apply_async((report,))
    assert not isinstance(again, PendingDuplicate)
    assert again.id != pending_id
    assert EnqueueLock.objects.get(task_id=again.id)


def _occupy_the_pool(tmp_path) -> object:
    go = tmp_path / "go"
    tasks.hold_until.delay("busy", str(go))
    wait_until(lambda: Effect.objects.filter(key="busy").exists(), what="the pool to be busy")
    return go


def test_unique__message_expired_before_it_ran__lock_released(start_worker):
    start_worker(concurrency=1)
    gone = tasks.idem_unique.apply_async(
        ("expired",), expires=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert isinstance(tasks.idem_unique.apply_async(("expired",)), PendingDuplicate)
    _publishes_again(tasks.idem_unique, "expired", gone.id)
    assert not Effect.objects.filter(key="expired").exclude(task_id="").exists()


def test_unique__message_revoked_before_it_ran__lock_released(start_worker, tmp_path):
    start_worker(concurrency=1)
    go = _occupy_the_pool(tmp_path)
    revoked = tasks.idem_unique.apply_async(("revoked",))
    replies = celery_app.control.revoke(revoked.id, reply=True, timeout=10)
    assert replies, "the worker did not confirm the revoke"
    go.touch()  # the pool frees up; the revoked message is discarded, not run
    _publishes_again(tasks.idem_unique, "revoked", revoked.id)


def test_unique__message_the_worker_rejects__lock_released(start_worker):
    start_worker(concurrency=1)
    rejected = tasks.idem_unique.apply_async(("rejected",), headers={"eta": "not a date"})
    _publishes_again(tasks.idem_unique, "rejected", rejected.id)
    assert not Effect.objects.filter(key="rejected").exists()


def test_unique__message_for_a_task_the_worker_does_not_know__lock_released(start_worker):
    start_worker(concurrency=1)
    unknown = unique_unknown_to_the_worker.apply_async(("unknown",))
    _publishes_again(unique_unknown_to_the_worker, "unknown", unknown.id)


def test_unique__message_dead_lettered_before_its_body_started__lock_released(start_worker):
    start_worker(concurrency=1, env={"DJCELERY_OPS_DEAD_LETTER_MAX_DELIVERIES": "1"})
    lost = tasks.unique_dies_before_start.apply_async(("poison",))
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=lost.id).first(), what="the dead letter"
    )
    assert letter.reason == "too_many_deliveries"
    _publishes_again(tasks.unique_dies_before_start, "poison", lost.id)
    assert not Effect.objects.filter(key="poison").exists()
