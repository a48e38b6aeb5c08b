"""Bulk actions: a whole group replayed or discarded by a worker, in slices, with progress.

These call the service in this process (the worker's side is ``run``); the real worker,
killed mid-action, is in ``tests/test_bulk_actions_worker.py``.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import pytest
from celery import Celery
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from djcelery_ops.deadletter import bulk
from djcelery_ops.deadletter.selection import Selection
from djcelery_ops.models import BulkAction, DeadLetter, Discard, Replay
from tests.factories import dead_letter
from tests.replay_helpers import drain

pytestmark = pytest.mark.django_db

Status = BulkAction.Status


def group(size: int, *, task_name: str = "shop.charge", **fields) -> str:
    """``size`` pending dead letters of one failure group; its fingerprint."""
    letters = [dead_letter(task_name=task_name, **fields) for _ in range(size)]
    assert len({letter.fingerprint for letter in letters}) == 1
    return letters[0].fingerprint


def started(fingerprint: str, action: str = "discard", by="ops") -> BulkAction:
    return bulk.start(Selection(fingerprint=fingerprint), action=action, by=by, reason="outage")


def run_to_the_end(action: BulkAction, *, batch_size: int, committing=None) -> list[str]:
    """Slices of one batch each, as the task runs them (hand_on between slices).

    ``committing``: a context in which the slice's on-commit callbacks (its replays'
    publishing) run, as they would in a worker, where each batch commits for real."""
    results, task_id = [], action.task_id
    while True:
        with committing() if committing else contextlib.nullcontext():
            result = bulk.run(action.pk, task_id, slice_seconds=0, batch_size=batch_size)
        results.append(result)
        if result != bulk.MORE:
            return results
        assert bulk.hand_on(action.pk, task_id)
        task_id = BulkAction.objects.get(pk=action.pk).task_id


def test_discard_of_a_group__in_slices_with_exact_figures_and_an_audit_trail(
    django_capture_on_commit_callbacks,
):
    user = User.objects.create_user("oncall")
    fingerprint = group(25)
    other = dead_letter(task_name="mail.send")
    with django_capture_on_commit_callbacks() as sent:
        action = started(fingerprint, by=user)
    assert len(sent) == 1  # the message goes once the request's transaction commits
    assert action.status == Status.QUEUED and action.selection == {"fingerprint": fingerprint}

    results = run_to_the_end(action, batch_size=10)

    action.refresh_from_db()
    assert results == [bulk.MORE, bulk.MORE, bulk.DONE]
    assert (action.status, action.total, action.done, action.skipped) == (Status.DONE, 25, 25, 0)
    assert action.batches == 3 and action.finished_at is not None and action.started_at
    assert DeadLetter.objects.filter(fingerprint=fingerprint, status="discarded").count() == 25
    assert Discard.objects.filter(by="oncall", reason="outage").count() == 25
    assert LogEntry.objects.filter(user=user, change_message="discard: outage").count() == 25
    assert DeadLetter.objects.get(pk=other.pk).status == "pending"
    assert bulk.run(action.pk, action.task_id) == bulk.STEPPED_ASIDE  # a late redelivery


def test_replay_of_a_group__skipped_rows_counted_once_across_slices(
    celery_queue, django_capture_on_commit_callbacks
):
    fingerprint = group(12, options={"queue": celery_queue})
    blocked = DeadLetter.objects.filter(fingerprint=fingerprint).order_by("pk")[:3]
    DeadLetter.objects.filter(pk__in=[row.pk for row in blocked]).update(
        replay_blocker="payload truncated"
    )
    action = started(fingerprint, action="replay")
    run_to_the_end(
        action,
        batch_size=5,
        committing=lambda: django_capture_on_commit_callbacks(execute=True),
    )

    action.refresh_from_db()
    assert (action.status, action.done, action.skipped) == (Status.DONE, 9, 3)
    assert action.skipped_reasons == {"payload truncated": 3}  # not 3 once per slice
    replays = Replay.objects.filter(run_id=bulk.run_id_of(action))
    assert replays.count() == 9 and not replays.filter(published_at__isnull=True).exists()
    sent = [message["headers"] for message in drain(celery_queue)]
    assert sorted(h["id"] for h in sent if h["task"] == "shop.charge") == sorted(
        replays.values_list("new_task_id", flat=True)
    )  # each replay once
    assert sum(h["task"] == bulk.TASK_NAME for h in sent) == 2  # the two continuations


def test_resume__a_new_message_takes_over_and_the_old_one_rolls_its_batch_back(celery_queue):
    action = started(group(6))
    first = action.task_id
    assert bulk.run(action.pk, first, slice_seconds=0, batch_size=2) == bulk.MORE
    assert bulk.resume(BulkAction.objects.filter(pk=action.pk)) == 1
    [message] = drain(celery_queue)
    taken_over = BulkAction.objects.get(pk=action.pk).task_id
    assert taken_over != first and message["headers"]["id"] == taken_over
    assert message["headers"]["task"] == bulk.TASK_NAME and message["args"] == [action.pk]

    assert bulk.run(action.pk, first, slice_seconds=0, batch_size=2) == bulk.STEPPED_ASIDE
    action.refresh_from_db()
    assert action.done == 2
    assert DeadLetter.objects.filter(status="discarded").count() == 2  # nothing half-applied
    assert bulk.run(action.pk, taken_over, batch_size=2) == bulk.DONE
    assert BulkAction.objects.get(pk=action.pk).done == 6


def test_cancel__a_queued_action_at_once_a_running_one_before_its_next_batch():
    queued = started(group(2, task_name="a"))
    running = started(group(6, task_name="b"))
    assert bulk.run(running.pk, running.task_id, slice_seconds=0, batch_size=2) == bulk.MORE
    assert bulk.cancel(BulkAction.objects.all()) == 2

    assert BulkAction.objects.get(pk=queued.pk).status == Status.CANCELLED
    assert bulk.run(queued.pk, queued.task_id) == bulk.STEPPED_ASIDE
    assert bulk.run(running.pk, running.task_id, batch_size=2) == bulk.CANCELLED
    running.refresh_from_db()
    assert (running.status, running.done) == (Status.CANCELLED, 2)
    assert DeadLetter.objects.filter(task_name="b", status="pending").count() == 4
    assert not DeadLetter.objects.filter(task_name="a").exclude(status="pending").exists()


@contextlib.contextmanager
def _nowhere_env() -> Iterator[None]:
    """Celery reads CELERY_BROKER_URL from the environment before the app's own URL."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CELERY_BROKER_URL", raising=False)
        yield


def _nowhere() -> Celery:
    """A Celery app whose broker refuses connections, and does not retry."""
    app = Celery("nowhere", broker="redis://127.0.0.1:9/0", set_as_current=False)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.task_publish_retry = False
    app.conf.broker_transport_options = {"max_retries": 0}
    return app


def test_start__a_broker_that_refuses__the_action_is_failed_and_nothing_changed(
    celery_queue, django_capture_on_commit_callbacks
):
    fingerprint = group(3)
    refused = pytest.raises(bulk.ReplayError, match="not handed to a worker")
    with refused, _nowhere_env(), django_capture_on_commit_callbacks(execute=True):
        bulk.start(
            Selection(fingerprint=fingerprint), action="discard", by="ops", reason="x",
            app=_nowhere(),
        )  # fmt: skip
    action = BulkAction.objects.get()
    assert action.status == Status.FAILED and "not handed to a worker" in action.error
    assert not DeadLetter.objects.exclude(status="pending").exists()

    assert bulk.resume(BulkAction.objects.all()) == 1  # the broker is back
    action.refresh_from_db()
    assert (action.status, action.error) == (Status.QUEUED, "")
    assert [m["args"] for m in drain(celery_queue)] == [[action.pk]]


def test_start__refuses_a_missing_reason_an_unknown_action_and_ids():
    with pytest.raises(ValueError, match="reason"):
        bulk.start(Selection(fingerprint="f"), action="discard", by="ops", reason="  ")
    with pytest.raises(ValueError, match="unknown bulk action"):
        bulk.start(Selection(fingerprint="f"), action="delete", by="ops", reason="x")
    with pytest.raises(ValueError, match="filters, not ids"):
        bulk.start(Selection(ids=(1, 2)), action="discard", by="ops", reason="x")
    assert not BulkAction.objects.exists()


def test_selection__kept_as_json_and_read_back():
    since = timezone.now() - datetime.timedelta(days=1)
    selection = Selection(task="shop.charge", exception="KeyError", queue="q", since=since)
    data = bulk.selection_data(selection)
    assert data["since"] == since.isoformat()
    assert bulk.selection_of(data) == selection


# --- the admin ---------------------------------------------------------------------------

GROUP_ACTION = "admin:djcelery_ops_deadletter_group_action"


def operator(client, *codenames: str) -> User:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in ("view_deadletter", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


def test_admin__a_group_above_the_threshold_goes_to_a_worker(
    client, settings, django_capture_on_commit_callbacks
):
    settings.DJCELERY_OPS_DEAD_LETTER_BACKGROUND_ABOVE = 3
    operator(client, "discard_deadletter")
    fingerprint = group(4)
    url = reverse(GROUP_ACTION, args=["discard"]) + f"?fingerprint={fingerprint}"
    assert "djops-background" in client.get(url).content.decode()

    with django_capture_on_commit_callbacks() as sent:
        response = client.post(url, {"post": "yes", "reason": "queue was down"})
    action = BulkAction.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:djcelery_ops_bulkaction_change", args=[action.pk])
    assert len(sent) == 1 and action.by == "operator" and action.reason == "queue was down"
    assert not DeadLetter.objects.exclude(status="pending").exists()  # the worker does it

    page = client.get(response["Location"])
    assert page["Refresh"] == "5" and "queued" in page.content.decode()


def test_admin__a_group_at_the_threshold_runs_in_the_request(client, settings):
    settings.DJCELERY_OPS_DEAD_LETTER_BACKGROUND_ABOVE = 3
    operator(client, "discard_deadletter")
    fingerprint = group(3)
    url = reverse(GROUP_ACTION, args=["discard"]) + f"?fingerprint={fingerprint}"
    assert "djops-background" not in client.get(url).content.decode()
    client.post(url, {"post": "yes", "reason": "x"})
    assert not BulkAction.objects.exists()
    assert DeadLetter.objects.filter(status="discarded").count() == 3


def test_admin__no_reason_no_action(client, settings):
    settings.DJCELERY_OPS_DEAD_LETTER_BACKGROUND_ABOVE = 1
    operator(client, "discard_deadletter")
    url = reverse(GROUP_ACTION, args=["discard"]) + f"?fingerprint={group(2)}"
    page = client.post(url, {"post": "yes", "reason": ""})
    assert page.status_code == 200 and not BulkAction.objects.exists()


def test_admin__bulk_actions_seen_and_cancelled_only_by_who_may_do_that_action(client):
    replay_action = started(group(2, task_name="a"), action="replay")
    discard_action = started(group(2, task_name="b"), action="discard")
    changelist = reverse("admin:djcelery_ops_bulkaction_changelist")
    user = operator(client)
    assert client.get(changelist).status_code == 403  # viewing dead letters is not enough

    user.user_permissions.add(Permission.objects.get(codename="replay_deadletter"))
    user = User.objects.get(pk=user.pk)  # permissions are cached on the instance
    client.force_login(user)
    page = client.get(changelist).content.decode()
    assert "cancel_selected" in page and str(replay_action) in page
    selected = [str(replay_action.pk), str(discard_action.pk)]
    client.post(changelist, {"action": "cancel_selected", "_selected_action": selected})
    assert BulkAction.objects.get(pk=replay_action.pk).status == Status.CANCELLED
    assert BulkAction.objects.get(pk=discard_action.pk).status == Status.QUEUED
    change = reverse("admin:djcelery_ops_bulkaction_change", args=[replay_action.pk])
    assert "Refresh" not in client.get(change)  # finished: nothing to follow


@pytest.mark.parametrize(("rows", "background"), [(3, False), (4, True)])
def test_admin__a_threshold_above_what_the_page_counts_is_still_exact(
    client, settings, monkeypatch, rows, background
):
    from djcelery_ops.admin import deadletter_actions

    monkeypatch.setattr(deadletter_actions, "PLAN_CAP", 2)  # the page counts 2 rows at most
    settings.DJCELERY_OPS_DEAD_LETTER_BACKGROUND_ABOVE = 3
    operator(client, "discard_deadletter")
    url = reverse(GROUP_ACTION, args=["discard"]) + f"?fingerprint={group(rows)}"
    assert ("djops-background" in client.get(url).content.decode()) is background
