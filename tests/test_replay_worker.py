"""Replays run by a real worker: success resolves the dead letter, failure links back."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from djcelery_ops.deadletter.services import replay
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


def _letters(queue: str, task: str, args: list, count: int) -> list[DeadLetter]:
    return [
        dead_letter(task_name=f"tests.testapp.tasks.{task}", args=args, kwargs={},
                    options={"queue": queue})
        for _ in range(count)
    ]  # fmt: skip


def test_command_canary_that_fails_again__stops_with_exit_2_and_the_rest_stays_pending(
    worker, celery_queue
):
    _letters(celery_queue, "ops_raise", ["nope"], 3)
    with pytest.raises(CommandError) as caught:
        call_command(
            "replay_dead_letters", "--canary=1", "--canary-timeout=60", "--reason=canary",
            stdout=StringIO(),
        )  # fmt: skip
    assert caught.value.returncode == 2
    assert str(caught.value).startswith("Stopped: 1 of 1 canary replays failed again.")
    assert Replay.objects.get().outcome == Replay.Outcome.FAILED
    assert DeadLetter.objects.filter(replay_of__isnull=True, status="pending").count() == 2


def test_command_canary_that_succeeds__replays_the_rest(worker, celery_queue):
    _letters(celery_queue, "ops_add", [2, 3], 3)
    out = StringIO()
    call_command(
        "replay_dead_letters", "--canary=1", "--canary-timeout=60", "--reason=canary",
        stdout=out,
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["Replayed 1/3 (skipped 0)", "Canary: 1 replays succeeded.",
                         "Replayed 3/3 (skipped 0)"]  # fmt: skip
    wait_until(lambda: DeadLetter.objects.filter(status="resolved").count() == 3)


def test_command_max_failure_rate__stops_the_run_with_exit_2(worker, celery_queue):
    _letters(celery_queue, "ops_raise", ["nope"], 4)
    with pytest.raises(CommandError) as caught:
        call_command(
            "replay_dead_letters", "--batch-size=2", "--max-failure-rate=50%",
            "--canary-timeout=60", "--reason=guarded", stdout=StringIO(),
        )  # fmt: skip
    assert caught.value.returncode == 2
    assert "2 of 2 finished replays failed again (over 50%)." in str(caught.value)
    assert Replay.objects.count() == 2
    assert DeadLetter.objects.filter(replay_of__isnull=True, status="pending").count() == 2
