"""Replay and discard from the admin: permissions, confirmation, reason, edit, groups."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from djcelery_ops.models import DeadLetter, Discard, Replay
from tests.celery_app import app as celery_app
from tests.factories import dead_letter
from tests.replay_helpers import drain

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:djcelery_ops_deadletter_changelist")


def operator(client, *codenames: str):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in ("view_deadletter", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


@pytest.fixture
def publishing(django_capture_on_commit_callbacks):
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_actions__hidden_without_their_permission(client):
    dead_letter()
    operator(client)
    page = client.get(CHANGELIST).content.decode()
    assert "replay_selected" not in page and "discard_selected" not in page
    forged = {"action": "replay_selected", "_selected_action": ["1"], "post": "yes", "reason": "x"}
    page = client.post(CHANGELIST, {**forged, "index": "0"}).content.decode()
    assert "djops-plan" not in page
    assert not Replay.objects.exists()
    assert DeadLetter.objects.get().status == "pending"


def test_replay_action__confirmation_shows_counts_and_skipped_then_needs_a_reason(
    client, celery_queue, publishing
):
    user = operator(client, "replay_deadletter")
    a = dead_letter(task_name="shop.charge", options={"queue": celery_queue})
    b = dead_letter(task_name="shop.charge", options={"queue": celery_queue})
    done = dead_letter(task_name="mail.send")
    DeadLetter.objects.filter(pk=done.pk).update(status="resolved")
    selected = [str(a.pk), str(b.pk), str(done.pk)]

    page = client.post(
        CHANGELIST, {"action": "replay_selected", "_selected_action": selected, "index": "0"}
    ).content.decode()
    assert "Replay 2 dead letters:" in page
    assert "<td>shop.charge</td><td>2</td>" in page
    assert "already resolved: 1" in page
    assert not Replay.objects.exists()

    confirm = {"action": "replay_selected", "_selected_action": selected, "post": "yes"}
    page = client.post(CHANGELIST, {**confirm, "reason": "  "}).content.decode()
    assert "This field is required." in page
    assert not Replay.objects.exists()

    with publishing():
        response = client.post(CHANGELIST, {**confirm, "reason": "gateway fixed"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert texts == ["Replayed 2 dead letters.", "Skipped 1 dead letter: already resolved 1."]
    assert len(drain(celery_queue)) == 2
    assert set(Replay.objects.values_list("user", "by", "reason")) == {
        (user.pk, "operator", "gateway fixed")
    }
    entries = LogEntry.objects.filter(user=user)
    assert sorted(int(e.object_id) for e in entries) == [a.pk, b.pk]
    assert {e.change_message for e in entries} == {"replay: gateway fixed"}


def test_discard_action__records_who_and_why(client):
    user = operator(client, "discard_deadletter")
    letter = dead_letter()
    page = client.get(CHANGELIST).content.decode()
    assert "discard_selected" in page and "replay_selected" not in page
    client.post(
        CHANGELIST,
        {"action": "discard_selected", "_selected_action": [letter.pk], "post": "yes",
         "reason": "customer deleted"},
    )  # fmt: skip
    assert DeadLetter.objects.get().status == "discarded"
    assert Discard.objects.get().user == user


def test_select_across__replays_every_filtered_row(client, celery_queue, publishing):
    operator(client, "replay_deadletter")
    for _ in range(3):
        dead_letter(task_name="a", options={"queue": celery_queue})
    dead_letter(task_name="b", options={"queue": celery_queue})
    url = f"{CHANGELIST}?task_name=a"
    first = [str(DeadLetter.objects.filter(task_name="a").first().pk)]
    page = client.post(
        url,
        {"action": "replay_selected", "_selected_action": first, "select_across": "1",
         "index": "0"},
    ).content.decode()  # fmt: skip
    assert "Replay 3 dead letters:" in page
    with publishing():
        client.post(
            url,
            {"action": "replay_selected", "_selected_action": first, "select_across": "1",
             "post": "yes", "reason": "all of a"},
        )  # fmt: skip
    assert Replay.objects.count() == 3
    assert DeadLetter.objects.get(task_name="b").status == "pending"


def test_edit_and_replay__bad_json_is_a_form_error_then_good_json_is_published(
    client, celery_queue, publishing
):
    operator(client, "replay_deadletter")
    letter = dead_letter(args=[1], kwargs={"amount": 10}, options={"queue": celery_queue})
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    change = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
    assert url in client.get(change).content.decode()

    for args, kwargs, error in [
        ("[1,", "{}", "Invalid JSON"),
        ('{"a": 1}', "{}", "Must be a JSON list."),
        ("[1]", "[2]", "Must be a JSON object."),
    ]:
        page = client.post(url, {"args": args, "kwargs": kwargs, "reason": "fix"})
        assert error in page.content.decode()
    assert not Replay.objects.exists() and drain(celery_queue) == []

    with publishing():
        response = client.post(
            url, {"args": "[1]", "kwargs": '{"amount": 100}', "reason": "typo in amount"}
        )
    assert response.status_code == 302
    [message] = drain(celery_queue)
    assert message["kwargs"] == {"amount": 100}
    row = Replay.objects.get()
    assert row.edits == {"kwargs": {"old": {"amount": 10}, "new": {"amount": 100}}}
    page = client.get(change).content.decode()
    assert "typo in amount" in page and row.new_task_id in page
    assert url not in page  # replayed: no second "Edit and replay"


def test_edit_and_replay__needs_the_permission(client):
    operator(client)
    letter = dead_letter()
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"args": "[]", "kwargs": "{}", "reason": "x"}).status_code == 403


def test_groups__counts_and_replay_of_a_whole_group(client, celery_queue, publishing):
    operator(client, "replay_deadletter")
    for _ in range(3):
        dead_letter(task_name="a", options={"queue": celery_queue})
    other = dead_letter(task_name="b", options={"queue": celery_queue})
    page = client.get(reverse("admin:djcelery_ops_deadletter_groups")).content.decode()
    fingerprint = DeadLetter.objects.filter(task_name="a").first().fingerprint
    assert f'data-fingerprint="{fingerprint}"' in page
    assert "<td>3</td>" in page and "Discard group" not in page

    url = reverse("admin:djcelery_ops_deadletter_group_action", args=["replay"])
    page = client.get(url, {"fingerprint": fingerprint}).content.decode()
    assert "Replay 3 dead letters:" in page
    with publishing():
        client.post(f"{url}?fingerprint={fingerprint}", {"post": "yes", "reason": "group"})
    assert Replay.objects.count() == 3
    assert DeadLetter.objects.get(pk=other.pk).status == "pending"
    denied = reverse("admin:djcelery_ops_deadletter_group_action", args=["discard"])
    assert client.get(denied, {"fingerprint": fingerprint}).status_code == 403


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (DEEP, "{}", "Nested more than 100 levels deep."),
        ("[" * 101 + "]" * 101, "{}", "Nested more than 100 levels deep."),
        ("[NaN]", "{}", "NaN is not JSON"),
        ("[1]", '{"a": Infinity}', "Infinity is not JSON"),
        ("[-Infinity]", "{}", "-Infinity is not JSON"),
        ("[1e999]", "{}", "inf is not JSON"),
        ('["a\\u0000b"]', "{}", "may not contain NUL"),
        ("[1]", '{"\\u0000": 1}', "may not contain NUL"),
        ('["\\ud800"]', "{}", "lone surrogates"),
        ("[1]", '{"k": ["\\udfff"]}', "lone surrogates"),
    ],
)
def test_edit_and_replay__unstorable_json_is_a_form_error_and_the_row_is_untouched(
    client, celery_queue, args, kwargs, error
):
    operator(client, "replay_deadletter")
    letter = dead_letter(args=[1], kwargs={"amount": 10}, options={"queue": celery_queue})
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    response = client.post(url, {"args": args, "kwargs": kwargs, "reason": "fix"})
    assert response.status_code == 200
    assert error in response.content.decode().replace("&quot;", '"')
    assert "Nothing was published." in response.content.decode()
    letter.refresh_from_db()
    assert (letter.status, letter.args, letter.kwargs) == ("pending", [1], {"amount": 10})
    assert not Replay.objects.exists() and drain(celery_queue) == []


def test_edit_and_replay__a_malformed_or_unknown_id_is_404(client):
    operator(client, "replay_deadletter")
    letter = dead_letter()
    for object_id in ("abc", "1.5", str(letter.pk + 1000)):
        url = f"/admin/djcelery_ops/deadletter/{object_id}/replay/"
        assert client.get(url).status_code == 404, object_id
        post = {"args": "[]", "kwargs": "{}", "reason": "x"}
        assert client.post(url, post).status_code == 404, object_id
    assert DeadLetter.objects.get().status == "pending"


def test_edit_and_replay__a_truncated_payload_is_not_offered_as_arguments(
    client, celery_queue, publishing, settings
):
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_PAYLOAD_BYTES = 1500
    operator(client, "replay_deadletter")
    letter = dead_letter(args=["x" * 2000], kwargs={}, options={"queue": celery_queue})
    assert letter.payload_truncated and "__truncated__" in letter.args[0]
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])

    form = client.get(url).context["form"]
    assert form["args"].value() in (None, "") and form["kwargs"].value() in (None, "")
    assert "__truncated__" not in client.get(url).content.decode()

    stored = json.dumps(letter.args)
    page = client.post(url, {"args": stored, "kwargs": "{}", "reason": "as stored"})
    assert "preview of a truncated payload" in str(page.context["form"].errors["args"])
    assert not Replay.objects.exists() and drain(celery_queue) == []

    with publishing():
        response = client.post(url, {"args": '["full"]', "kwargs": "{}", "reason": "complete"})
    assert response.status_code == 302
    [message] = drain(celery_queue)
    assert message["args"] == ["full"]


def test_changelist__filters_dead_letters_whose_replay_was_interrupted(client):
    operator(client, "view_deadletter")
    stuck, done, other = dead_letter(), dead_letter(), dead_letter()
    DeadLetter.objects.filter(pk__in=[stuck.pk, done.pk]).update(status="replayed")
    old = timezone.now() - datetime.timedelta(hours=1)
    Replay.objects.create(dead_letter=stuck, by="x", reason="r", run_id="r", new_task_id="t1",
                          created_at=old)  # fmt: skip
    Replay.objects.create(dead_letter=done, by="x", reason="r", run_id="r", new_task_id="t2",
                          created_at=old, published_at=old)  # fmt: skip
    url = reverse("admin:djcelery_ops_deadletter_changelist")
    response = client.get(url, {"replay": "interrupted"})
    assert [row.pk for row in response.context["cl"].result_list] == [stuck.pk]
    assert other.pk in {row.pk for row in client.get(url).context["cl"].result_list}


def _never_decoded(queue: str) -> DeadLetter:
    """A dead letter as a JSON-only worker records a pickled message it refused."""
    from djcelery_ops.deadletter.record import FailureRecord
    from djcelery_ops.deadletter.store import store_record

    raw = "gASVAAAAAAAAAAB9lC4="  # any bytes: nothing here decodes them
    return store_record(
        FailureRecord(
            task_id="never-decoded",
            task_name="tests.testapp.tasks.ops_record_call",
            reason="rejected_message",
            args=[],
            kwargs={},
            options={
                "queue": queue,
                "content_type": "application/x-python-serialize",
                "content_encoding": "binary",
                "raw_body": raw,
                "message_headers": {"task": "tests.testapp.tasks.ops_record_call", "id": "x"},
            },
            replay_blocker="body never decoded",
        )
    )


def test_edit_and_replay__shows_why_a_dead_letter_is_not_replayable_as_is(client):
    operator(client, "replay_deadletter")
    from djcelery_ops.deadletter.record import record_from_request
    from djcelery_ops.deadletter.store import store_record

    letter = store_record(
        record_from_request(
            {"id": "unencodable"},
            task_name="t",
            reason="exception",
            exc=None,
            traceback="",
            args=[object()],
            kwargs={},
        )  # fmt: skip
    )
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    page = client.get(url).content.decode()
    assert "Not replayable as is: payload not kept faithfully: EncodeError" in page
    change = client.get(reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk]))
    assert "payload not kept faithfully" in change.content.decode()


def test_republish_original_action__confirms_then_publishes_the_raw_body(
    client, celery_queue, publishing
):
    operator(client, "replay_deadletter")
    raw = _never_decoded(celery_queue)
    plain = dead_letter(options={"queue": celery_queue})
    selected = [str(raw.pk), str(plain.pk)]
    action = {"action": "republish_original_selected", "_selected_action": selected}

    replay_page = client.post(
        CHANGELIST, {"action": "replay_selected", "_selected_action": selected, "index": "0"}
    ).content.decode()
    assert "body never decoded: 1" in replay_page

    page = client.post(CHANGELIST, {**action, "index": "0"}).content.decode()
    assert "Republish the original message, unchanged, of 1 dead letter" in page
    assert "not a message that was never decoded: 1" in page
    assert not Replay.objects.exists()

    with publishing():
        client.post(CHANGELIST, {**action, "index": "0", "post": "yes", "reason": "to pickle"})
    row = Replay.objects.get()
    assert row.dead_letter_id == raw.pk and row.edits["raw_body"]["new"] is True
    with celery_app.connection_for_write() as conn:
        message = conn.default_channel.basic_get(celery_queue, no_ack=True)
    assert message.body == base64.b64decode(raw.options["raw_body"])
    assert message.content_type == "application/x-python-serialize"
    assert message.headers["id"] == row.new_task_id
    assert message.headers["djcelery_ops_replay_of"] == str(raw.pk)
