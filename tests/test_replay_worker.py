"""Replays run by a real worker: success resolves the dead letter, failure links back."""

from __future__ import annotations

import pytest

from djcelery_ops.deadletter.replay import replay
from djcelery_ops.models import DeadLetter, Replay
from tests.factories import dead_letter
from tests.utils import wait_until

pytestmark = pytest.mark.worker


def test_replayed_task_that_succeeds__resolves_its_dead_letter(worker, celery_queue):
    letter = dead_letter(
        task_name="tests.testapp.tasks.ops_add",
        args=[1, 2],
        kwargs={},
        options={"queue": celery_queue, "headers": {"tenant": "acme"}},
    )
    outcome = replay([letter], by="ops", reason="dependency is back")

    wait_until(
        lambda: DeadLetter.objects.get(pk=letter.pk).status == DeadLetter.Status.RESOLVED,
        what="the dead letter to be resolved",
    )
    row = Replay.objects.get(dead_letter=letter)
    assert row.new_task_id == outcome.new_task_ids[0]
    assert row.outcome == Replay.Outcome.SUCCEEDED and row.finished_at is not None
    assert outcome.new_task_ids[0] in worker.log()


def test_replayed_task_that_fails_again__is_a_new_dead_letter_linked_to_its_replay(
    worker, celery_queue
):
    letter = dead_letter(
        task_name="tests.testapp.tasks.ops_raise",
        args=["still broken"],
        kwargs={},
        options={"queue": celery_queue},
    )
    outcome = replay([letter], by="ops", reason="try again")

    again = wait_until(
        lambda: DeadLetter.objects.filter(task_id=outcome.new_task_ids[0]).first(),
        what="the replay to fail into a new dead letter",
    )
    row = Replay.objects.get(dead_letter=letter)
    assert again.replay_of == row
    assert again.exception_message == "still broken"
    assert again.options["headers"]["djcelery_ops_replay_of"] == str(letter.pk)
    assert row.outcome == Replay.Outcome.FAILED
    assert DeadLetter.objects.get(pk=letter.pk).status == DeadLetter.Status.REPLAYED
    assert again.status == DeadLetter.Status.PENDING
