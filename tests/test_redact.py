"""Secrets: shown redacted in the admin and the logs, kept intact for replay."""

from __future__ import annotations

import json
import logging

import pytest
from django.contrib.auth.models import Permission, User
from django.core import checks
from django.urls import reverse

from djcelery_ops.deadletter.services import replay
from djcelery_ops.logs import JsonFormatter, log_event
from djcelery_ops.models import DeadLetter, Replay, TaskRun
from djcelery_ops.redact import REDACTED, UnrestoredPlaceholder, redact, redact_text, restore
from tests.celery_app import app
from tests.factories import dead_letter
from tests.replay_helpers import drain
from tests.utils import wait_until

CARD = "4111 1111 1111 1111"  # passes the Luhn check
NOT_A_CARD = "4111 1111 1111 1112"
CHANGELIST = reverse("admin:djcelery_ops_deadletter_changelist")


# --- the function ----------------------------------------------------------------------------


def test_redact__secret_keys_at_any_depth_case_insensitive():
    value = {
        "Password": "hunter2",
        "user": {"API_KEY": "k", "name": "ada", "session_id": 7},
        "headers": [{"Authorization": "Bearer x"}],
        "token": None,
    }
    assert redact(value) == {
        "Password": REDACTED,
        "user": {"API_KEY": REDACTED, "name": "ada", "session_id": REDACTED},
        "headers": [{"Authorization": REDACTED}],
        "token": None,
    }
    assert value["Password"] == "hunter2"  # a copy: the caller's dict is untouched


def test_redact__card_numbers_only_when_the_luhn_check_passes():
    assert redact_text(f"card {CARD} declined") == f"card {REDACTED} declined"
    assert redact_text(f"order {NOT_A_CARD}") == f"order {NOT_A_CARD}"
    assert redact_text("order 12345") == "order 12345"
    assert redact([4111111111111111, 12, True]) == [REDACTED, 12, True]


def test_redact__follows_the_settings(settings):
    settings.DJCELERY_OPS_REDACT_KEYS = ["pin"]
    settings.DJCELERY_OPS_REDACT_PATTERNS = [r"sk_live_\w+"]
    assert redact({"pin": "1234", "password": "p", "note": "key sk_live_abc"}) == {
        "pin": REDACTED,
        "password": "p",
        "note": f"key {REDACTED}",
    }


def test_restore__untouched_placeholders_get_the_originals_back():
    original = {"password": "hunter2", "amount": 10, "note": f"card {CARD}"}
    edited = {**redact(original), "amount": 100}
    assert restore(edited, original) == {
        "password": "hunter2",
        "amount": 100,
        "note": f"card {CARD}",
    }
    assert restore([REDACTED, 2], [CARD, 1]) == [CARD, 2]
    assert restore({"password": "new"}, original) == {"password": "new"}


def test_restore__a_placeholder_where_nothing_was_redacted_is_refused():
    with pytest.raises(UnrestoredPlaceholder):
        restore({"amount": REDACTED}, {"amount": 10})
    with pytest.raises(UnrestoredPlaceholder):
        restore({"password": REDACTED}, None)


def test_check__a_pattern_that_does_not_compile_is_e003(settings):
    settings.DJCELERY_OPS_REDACT_PATTERNS = ["(unclosed"]
    errors = [m for m in checks.run_checks() if m.id == "djcelery_ops.E003"]
    assert len(errors) == 1 and "REDACT_PATTERNS" in errors[0].msg
    settings.DJCELERY_OPS_REDACT_KEYS = "password"
    assert any(m.id == "djcelery_ops.E002" for m in checks.run_checks())


# --- logs ------------------------------------------------------------------------------------


def test_log_event__fields_and_json_are_redacted(caplog):
    with caplog.at_level(logging.INFO, logger="djcelery_ops"):
        log_event("x.happened", password="hunter2", note=f"card {CARD}")
    [record] = caplog.records
    assert record.ops["password"] == REDACTED
    line = JsonFormatter().format(record)
    assert "hunter2" not in line and CARD not in line and record.getMessage().count(REDACTED) == 2


def test_json_formatter__masks_card_numbers_in_any_message():
    record = logging.LogRecord("djcelery_ops.x", logging.INFO, "", 0, "paid with %s", (CARD,), None)
    assert CARD not in JsonFormatter().format(record)


# --- admin -----------------------------------------------------------------------------------


def operator(client):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in ("view_deadletter", "replay_deadletter", "view_taskrun"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


def admin_pages(client, letter: DeadLetter) -> dict[str, str]:
    change = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
    edit = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    confirm = {"action": "replay_selected", "_selected_action": [str(letter.pk)], "index": "0"}
    return {
        "change": client.get(change).content.decode(),
        "list": client.get(CHANGELIST).content.decode(),
        "confirmation": client.post(CHANGELIST, confirm).content.decode(),
        "edit form": client.get(edit).content.decode(),
        "groups": client.get(reverse("admin:djcelery_ops_deadletter_groups")).content.decode(),
    }


@pytest.mark.django_db
def test_edit_and_replay__placeholders_left_as_shown_publish_the_stored_secrets(
    client, celery_queue, django_capture_on_commit_callbacks
):
    operator(client)
    letter = dead_letter(
        args=[CARD], kwargs={"password": "hunter2", "amount": 10}, options={"queue": celery_queue}
    )
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    form = client.get(url).context["form"]
    assert "hunter2" not in form["kwargs"].value() and CARD not in form["args"].value()

    page = client.post(url, {"args": "[1]", "kwargs": '{"amount": "[redacted]"}', "reason": "x"})
    assert "stands for a stored secret" in page.content.decode()
    kwargs = json.loads(form["kwargs"].value()) | {"amount": 100}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url, {"args": form["args"].value(), "kwargs": json.dumps(kwargs), "reason": "fix"}
        )
    assert response.status_code == 302
    [message] = drain(celery_queue)
    assert message["args"] == [CARD]
    assert message["kwargs"] == {"password": "hunter2", "amount": 100}
    lineage = client.get(reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk]))
    assert "hunter2" not in lineage.content.decode() and "100" in lineage.content.decode()


@pytest.mark.django_db
def test_task_run_admin__stored_args_are_shown_redacted(client):
    operator(client)
    run = TaskRun.objects.create(
        task_id="t1", task_name="shop.charge", state="failed", args=[CARD],
        kwargs={"password": "hunter2"}, exception_message=f"card {CARD} declined",
    )  # fmt: skip
    page = client.get(reverse("admin:djcelery_ops_taskrun_change", args=[run.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "hunter2" not in html and CARD not in html and REDACTED in html


# --- through a real worker -------------------------------------------------------------------


def ops_log_records(log: str) -> list[dict[str, object]]:
    """djcelery_ops' JSON lines in a worker's log (Celery's own lines are not ours)."""
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [record for record in records if str(record["logger"]).startswith("djcelery_ops")]


@pytest.mark.worker
def test_secrets_of_a_failed_task__hidden_from_admin_and_logs__intact_on_replay(
    client, worker, celery_queue
):
    app.send_task(
        "tests.testapp.tasks.ops_raise",
        args=[f"card {CARD} declined"],
        kwargs={"password": "hunter2", "card_number": "5555 5555 5555 4444", "amount": 10},
        headers={"authorization": "Bearer s3cr3t"},
        queue=celery_queue,
    )
    letter = wait_until(lambda: DeadLetter.objects.first(), what="the dead letter")
    assert letter.kwargs["password"] == "hunter2"  # the row keeps the real values

    operator(client)
    for name, html in admin_pages(client, letter).items():
        for secret in ("hunter2", CARD, "5555 5555 5555 4444", "s3cr3t"):
            assert secret not in html, f"{secret} shown on the {name} page"
    assert REDACTED in admin_pages(client, letter)["change"]
    records = ops_log_records(worker.log())
    assert any(record.get("event") == "task.dead_lettered" for record in records)
    for secret in ("hunter2", CARD, "s3cr3t"):
        assert secret not in json.dumps(records)

    outcome = replay([letter], by="ops", reason="check the secrets survive")
    again = wait_until(
        lambda: DeadLetter.objects.filter(task_id=outcome.new_task_ids[0]).first(),
        what="the replay to run and fail again",
    )
    assert again.kwargs["password"] == "hunter2"
    assert again.kwargs["card_number"] == "5555 5555 5555 4444"
    assert again.exception_message == f"card {CARD} declined"
    assert Replay.objects.get(dead_letter=letter).new_task_id == again.task_id
