"""Replay that continues the workflow (issue 15): chain, link, link_error, group, chord."""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from celery import chain, chord, group
from django.core.management import call_command
from django.urls import reverse

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.outbox import publish_options, workflow_options
from djcelery_ops.deadletter.record import BLOCKED_CHORD_MEMBER, record_from_request
from djcelery_ops.deadletter.services import replay
from djcelery_ops.deadletter.store import BLOCKED_WORKFLOW_TRUNCATED, store_record
from djcelery_ops.models import DeadLetter, Replay
from tests.celery_app import app as celery_app
from tests.testapp.models import Effect
from tests.testapp.tasks import (
    wf_callback,
    wf_errback,
    wf_flaky,
    wf_last,
    wf_member,
    wf_step,
)
from tests.utils import wait_until
from tests.worker import settle

LAST = {"task": "tests.testapp.tasks.wf_last", "args": [], "kwargs": {"tag": "t"}, "options": {}}


def _request(**workflow) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "args": [2],
        "kwargs": {"tag": "t"},
        "delivery_info": {"routing_key": "q"},
        **workflow,
    }


def _store(request: dict) -> DeadLetter:
    record = record_from_request(
        request,
        task_name="tests.testapp.tasks.wf_flaky",
        reason="exception",
        exc=ValueError("x"),
        traceback="",
    )
    return store_record(record)


# --- Stored with the dead letter, handed back on replay ---------------------------------------


@pytest.mark.django_db
def test_the_workflow_the_message_carried__is_kept_and_handed_back_to_send_task():
    callback = {"task": "tests.testapp.tasks.wf_callback", "kwargs": {"tag": "t"}}
    letter = _store(
        _request(chain=[LAST], callbacks=[callback], errbacks=[callback], group="g1", group_index=3)
    )

    assert letter.options["workflow"]["chain"] == [LAST]
    assert letter.replay_blocker == ""
    options = workflow_options(letter)
    assert options == {
        "chain": [LAST],
        "link": [callback],
        "link_error": [callback],
        "group_index": 3,
    }
    assert publish_options(letter)["group_id"] == "g1"


@pytest.mark.django_db
def test_a_message_without_a_workflow__stores_and_sends_none():
    letter = _store(_request())
    assert "workflow" not in letter.options
    assert workflow_options(letter) == {}


@pytest.mark.django_db
def test_a_workflow_over_the_size_cap__is_a_marker_and_plain_replay_refuses_it():
    big = {**LAST, "kwargs": {"tag": "x" * 5000}}
    limit = ops_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES
    letter = _store(_request(chain=[big] * (limit // 5000 + 2)))

    workflow = letter.options["workflow"]
    assert workflow["__truncated__"] is True and workflow["size_bytes"] > limit
    assert workflow["chain_tasks"][0] == "tests.testapp.tasks.wf_last"
    assert letter.replay_blocker == BLOCKED_WORKFLOW_TRUNCATED == "workflow truncated"
    assert workflow_options(letter) == {}
    outcome = replay([letter], by="ops", reason="try")
    assert outcome.done == 0
    assert dict(outcome.skipped) == {"workflow truncated": 1}


@pytest.mark.django_db
def test_a_chord_header_member__is_refused_by_plain_replay_with_the_reason():
    letter = _store(_request(chord={"task": "tests.testapp.tasks.wf_last"}, group="g"))
    assert letter.replay_blocker == BLOCKED_CHORD_MEMBER
    assert "chord header member" in BLOCKED_CHORD_MEMBER
    outcome = replay([letter], by="ops", reason="try")
    assert outcome.done == 0
    assert dict(outcome.skipped) == {BLOCKED_CHORD_MEMBER: 1}


# --- A real prefork worker ---------------------------------------------------------------------


def _keys(tag: str, part: str) -> list[str]:
    return list(
        Effect.objects.filter(key__startswith=f"{tag}:{part}").values_list("key", flat=True)
    )


def _dead_letter(task: str, tag: str, exclude: tuple[int, ...] = ()) -> DeadLetter:
    return wait_until(
        lambda: (
            DeadLetter.objects.filter(task_name=f"tests.testapp.tasks.{task}")
            .filter(exception_message__contains=tag)
            .exclude(pk__in=exclude)
            .first()
        ),
        what=f"a dead letter of {task}",
        timeout=60,
    )


def _failed_chain(tag: str) -> DeadLetter:
    chain(wf_step.s(1, tag=tag), wf_flaky.s(tag=tag), wf_last.s(tag=tag)).apply_async()
    letter = _dead_letter("wf_flaky", tag)
    assert [sig["task"] for sig in letter.options["workflow"]["chain"]] == [wf_last.name]
    return letter


@pytest.mark.worker
def test_replayed_chain_link__continues_the_chain_once(worker, celery_queue):
    tag = uuid.uuid4().hex[:10]
    letter = _failed_chain(tag)
    assert _keys(tag, "step") == [f"{tag}:step:1"]
    assert _keys(tag, "last") == []

    Effect.objects.create(key=f"{tag}:healed")
    outcome = replay([letter], by="ops", reason="healed")
    assert outcome.done == 1
    wait_until(lambda: _keys(tag, "last"), what="the rest of the chain to run", timeout=60)
    # Replaying again (service and command) does nothing: the letter was claimed once.
    again = replay([letter], by="ops", reason="twice")
    assert again.done == 0
    call_command(
        "replay_dead_letters", f"--task={wf_flaky.name}", "--reason=twice", stdout=StringIO()
    )
    call_command(
        "replay_dead_letters", f"--task={wf_flaky.name}", "--reason=twice", stdout=StringIO()
    )
    settle(3)
    assert _keys(tag, "flaky") == [f"{tag}:flaky:2"]
    assert _keys(tag, "last") == [f"{tag}:last:20"]
    assert _keys(tag, "step") == [f"{tag}:step:1"]
    # The next link keeps the task id Celery gave it when the chain was sent.
    planned = letter.options["workflow"]["chain"][0]["options"]["task_id"]
    assert Effect.objects.get(key=f"{tag}:last:20").task_id == planned
    assert Replay.objects.filter(dead_letter=letter).count() == 1
    wait_until(
        lambda: Replay.objects.get(dead_letter=letter).outcome == Replay.Outcome.SUCCEEDED,
        what="the replay to succeed",
    )


@pytest.mark.worker
def test_edit_and_replay_of_a_chain_link__sends_the_edited_args_and_keeps_the_rest(
    worker, celery_queue
):
    tag = uuid.uuid4().hex[:10]
    letter = _failed_chain(tag)
    Effect.objects.create(key=f"{tag}:healed")

    replay([letter], by="ops", reason="fixed input", args=[7], kwargs={"tag": tag})
    wait_until(lambda: _keys(tag, "last"), what="the rest of the chain to run", timeout=60)
    settle(2)
    assert _keys(tag, "flaky") == [f"{tag}:flaky:7"]
    assert _keys(tag, "last") == [f"{tag}:last:70"]


@pytest.mark.worker
def test_chain_that_fails_again_at_the_replayed_link__is_a_new_letter_with_the_chain(
    worker, celery_queue
):
    tag = uuid.uuid4().hex[:10]
    letter = _failed_chain(tag)
    outcome = replay([letter], by="ops", reason="not healed yet")
    again = _dead_letter("wf_flaky", tag, exclude=(letter.pk,))
    assert again.task_id == outcome.new_task_ids[0]
    assert again.replay_of == Replay.objects.get(dead_letter=letter)
    assert again.options["workflow"]["chain"] == letter.options["workflow"]["chain"]

    Effect.objects.create(key=f"{tag}:healed")
    replay([again], by="ops", reason="healed")
    wait_until(lambda: _keys(tag, "last"), what="the rest of the chain to run", timeout=60)
    settle(2)
    assert _keys(tag, "last") == [f"{tag}:last:20"]


@pytest.mark.worker
def test_replay_runs_link_callbacks_once_and_link_error_once_per_final_failure(
    worker, celery_queue
):
    tag = uuid.uuid4().hex[:10]
    first = wf_flaky.apply_async(
        (3,), {"tag": tag}, link=wf_callback.s(tag=tag), link_error=wf_errback.s(tag=tag)
    )
    letter = _dead_letter("wf_flaky", tag)
    wait_until(lambda: _keys(tag, "errback"), what="the original errback")
    assert set(letter.options["workflow"]) == {"callbacks", "errbacks"}

    # Replayed while still broken: fails for good again, its errback runs once.
    outcome = replay([letter], by="ops", reason="not healed yet")
    again = _dead_letter("wf_flaky", tag, exclude=(letter.pk,))
    wait_until(lambda: len(_keys(tag, "errback")) == 2, what="the replay's errback")
    # Healed: the callback runs once with the replay's result.
    Effect.objects.create(key=f"{tag}:healed")
    replay([again], by="ops", reason="healed")
    wait_until(lambda: _keys(tag, "callback"), what="the callback", timeout=60)
    call_command(
        "replay_dead_letters", f"--task={wf_flaky.name}", "--reason=twice", stdout=StringIO()
    )
    settle(3)
    assert sorted(_keys(tag, "errback")) == sorted(
        [f"{tag}:errback:{first.id}", f"{tag}:errback:{outcome.new_task_ids[0]}"]
    )
    assert _keys(tag, "callback") == [f"{tag}:callback:30"]
    assert _keys(tag, "flaky") == [f"{tag}:flaky:3"]


@pytest.mark.django_db
def test_admin_change_page__shows_the_rest_of_the_chain_in_order(admin_client):
    first = {**LAST, "task": "tests.testapp.tasks.wf_step"}
    letter = _store(_request(chain=[LAST, first]))  # reversed: wf_step runs next
    url = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
    page = admin_client.get(url).content.decode()
    assert "Rest of the chain" in page
    assert "tests.testapp.tasks.wf_step → tests.testapp.tasks.wf_last" in page


@pytest.mark.worker
def test_replayed_group_member__runs_under_its_original_group_id_and_index(worker, celery_queue):
    tag = uuid.uuid4().hex[:10]
    sent = group(wf_step.s(5, tag=tag), wf_member.s(1, tag=tag)).apply_async()
    letter = _dead_letter("wf_member", tag)
    assert letter.options["group_id"] == sent.id
    assert letter.options["workflow"]["group_index"] == 1

    Effect.objects.create(key=f"{tag}:healed")
    replay([letter], by="ops", reason="healed")
    wait_until(lambda: _keys(tag, "member"), what="the replayed member", timeout=60)
    assert _keys(tag, "member") == [f"{tag}:member:1:{sent.id}:1"]


@pytest.mark.worker
@pytest.mark.skipif(
    not str(celery_app.conf.result_backend or "").startswith("redis"),
    reason="a chord needs a result backend (DJCELERY_OPS_TEST_RESULT_BACKEND=redis://...)",
)
def test_chord_header_member__is_kept_but_refused_by_plain_replay(worker, celery_queue):
    tag = uuid.uuid4().hex[:10]
    chord([wf_step.s(5, tag=tag), wf_member.s(1, tag=tag)], wf_last.s(tag=tag)).apply_async()
    letter = _dead_letter("wf_member", tag)
    assert letter.replay_blocker == BLOCKED_CHORD_MEMBER
    Effect.objects.create(key=f"{tag}:healed")
    outcome = replay([letter], by="ops", reason="healed")
    assert outcome.done == 0 and dict(outcome.skipped) == {BLOCKED_CHORD_MEMBER: 1}
    settle(2)
    assert _keys(tag, "member") == [] and _keys(tag, "last") == []


@pytest.mark.worker
def test_task_killed_at_its_hard_time_limit__its_dead_letter_keeps_the_chain(worker, celery_queue):
    # Recorded by the worker's main process (OpsRequest), from the message's embed.
    from tests.testapp.tasks import ops_hard_limit

    tag = uuid.uuid4().hex[:8]
    result = chain(ops_hard_limit.si(), wf_last.si(0, tag=tag)).apply_async()
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=result.parent.id).first(),
        timeout=60, what="the hard-time-limit dead letter",
    )  # fmt: skip
    assert letter.reason == "hard_time_limit"
    remaining = letter.options["workflow"]["chain"]
    assert [link["task"] for link in remaining] == ["tests.testapp.tasks.wf_last"]
