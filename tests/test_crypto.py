"""Encryption at rest of dead-letter payloads: envelopes, rotation, the re-encrypt command,
a lost key (refused clearly, nothing published), the spool, and check E009."""

from __future__ import annotations

import sys
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from djcelery_ops import crypto
from djcelery_ops.deadletter.sealed import SKIP_KEY_MISSING, open_payload
from djcelery_ops.deadletter.services import replay
from djcelery_ops.deadletter.spool import ingest_spool, quarantined_files, write_to_spool
from djcelery_ops.models import DeadLetter, Replay
from tests.factories import dead_letter, failure_record
from tests.replay_helpers import drain

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-pass-41"
OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def secret_letter(queue: str = "payments"):
    return dead_letter(
        args=["alice"],
        kwargs={"password": SECRET},
        options={"queue": queue, "headers": {"authorization": SECRET}},
    )


def raw(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args, kwargs, options, call_body FROM djcelery_ops_deadletter WHERE id = %s",
            [pk],
        )
        return repr(cursor.fetchone())


def reencrypt(*options: str) -> str:
    out = StringIO()
    call_command("reencrypt_dead_letters", *options, stdout=out)
    return out.getvalue()


def test_envelopes__round_trip_and_clear_values_read_as_they_are(settings):
    assert crypto.seal({"a": 1}) == {"a": 1}  # no keys: stored in clear, as before
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    sealed, text = crypto.seal({"password": SECRET}), crypto.seal_text(SECRET)
    assert crypto.is_sealed(sealed) and SECRET not in repr(sealed)
    assert text.startswith(crypto.TEXT_PREFIX) and SECRET not in text
    assert crypto.unseal(sealed) == {"password": SECRET} and crypto.unseal_text(text) == SECRET
    assert crypto.unseal([1, "x"]) == [1, "x"] and crypto.unseal_text("[1]") == "[1]"


def test_no_key_opens_it__a_clear_error_never_an_empty_value(settings):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    sealed = crypto.seal(["x"])
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]
    with pytest.raises(crypto.PayloadKeyError, match="not in DJCELERY_OPS_ENCRYPTION_KEYS"):
        crypto.unseal(sealed)
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = []
    with pytest.raises(crypto.PayloadKeyError, match="DJCELERY_OPS_ENCRYPTION_KEYS is empty"):
        crypto.unseal(sealed)


def test_rotation__old_key_second_still_decrypts_and_the_command_moves_rows_to_the_new(
    settings,
):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = []
    in_clear = secret_letter()
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    under_old = secret_letter()
    assert SECRET in raw(in_clear.pk) and SECRET not in raw(under_old.pk)
    before = raw(under_old.pk)

    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW, OLD]
    for letter in (in_clear, under_old):
        assert open_payload(DeadLetter.objects.get(pk=letter.pk)).kwargs == {"password": SECRET}
    assert reencrypt("--dry-run") == (
        "Looked at 2/2 dead letters so far.\n"
        "Would re-encrypt 2 dead letters (1 stored in clear) and the edits of 0 replays; "
        "0 already under the first key.\n"
    )
    assert raw(under_old.pk) == before and SECRET in raw(in_clear.pk)

    assert reencrypt("--batch-size", "1") == (
        "Looked at 1/2 dead letters so far.\nLooked at 2/2 dead letters so far.\n"
        "Re-encrypted 2 dead letters (1 stored in clear) and the edits of 0 replays; "
        "0 already under the first key.\n"
    )
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]  # the old key retired
    for letter in (in_clear, under_old):
        row = DeadLetter.objects.get(pk=letter.pk)
        assert SECRET not in raw(row.pk)
        payload = open_payload(row)
        assert payload.kwargs == {"password": SECRET}
        assert payload.options["headers"] == {"authorization": SECRET}
        assert payload.args == ["alice"] and '"alice"' in payload.call_body
    assert reencrypt().endswith("0 dead letters (0 stored in clear) and the edits of 0 "
                                "replays; 2 already under the first key.\n")  # fmt: skip


def test_reencrypt__rows_no_key_opens_are_left_and_named_and_the_exit_code_is_1(settings):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    lost = secret_letter()
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]
    fine = secret_letter()
    before = raw(lost.pk)
    with pytest.raises(CommandError, match=rf"1 dead letter could not .* \(ids {lost.pk}\)") as err:
        reencrypt()
    assert err.value.returncode == 1
    assert raw(lost.pk) == before
    assert open_payload(DeadLetter.objects.get(pk=fine.pk)).kwargs == {"password": SECRET}

    settings.DJCELERY_OPS_ENCRYPTION_KEYS = []
    with pytest.raises(CommandError, match="DJCELERY_OPS_ENCRYPTION_KEYS is empty"):
        reencrypt()


def test_reencrypt__moves_the_edited_arguments_of_replays_too(settings, celery_queue):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    letter = secret_letter()
    replay([letter], by="ops", reason="fix", args=["bob"], kwargs={"password": "n3w-" + SECRET})
    row = Replay.objects.get()
    assert SECRET not in repr(row.edits)
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW, OLD]
    assert "the edits of 1 replay;" in reencrypt()
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]
    edits = crypto.unseal(Replay.objects.get().edits["kwargs"]["new"])
    assert edits == {"password": "n3w-" + SECRET}


def test_lost_key__replay_refuses_with_the_reason_the_letter_stays_pending_nothing_published(
    settings, celery_queue, django_capture_on_commit_callbacks
):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    lost = secret_letter(celery_queue)
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]

    with django_capture_on_commit_callbacks(execute=True):
        outcome = replay([lost], by="ops", reason="retry")
        edited = replay([lost], by="ops", reason="retry", args=["a"], kwargs={})
    for result in (outcome, edited):
        assert result.done == 0 and dict(result.skipped) == {SKIP_KEY_MISSING: 1}
    assert DeadLetter.objects.get(pk=lost.pk).status == DeadLetter.Status.PENDING
    assert not Replay.objects.exists() and drain(celery_queue) == []

    out = StringIO()
    call_command("replay_dead_letters", "--id", str(lost.pk), "--reason", "r", stdout=out)
    assert f"Skipped 1: {SKIP_KEY_MISSING} 1" in out.getvalue()
    assert drain(celery_queue) == []


def test_lost_key__the_admin_says_so_and_edit_and_replay_refuses(settings, client):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    lost = secret_letter()
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]
    client.force_login(User.objects.create_superuser("admin", password="pw"))

    page = client.get(reverse("admin:djcelery_ops_deadletter_change", args=[lost.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "encrypted with a key that is not in DJCELERY_OPS_ENCRYPTION_KEYS" in html
    edit = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[lost.pk])
    response = client.post(edit, {"args": "[]", "kwargs": "{}", "reason": "r"}, follow=True)
    assert "not in DJCELERY_OPS_ENCRYPTION_KEYS" in response.content.decode()
    assert not Replay.objects.exists()


def test_spool__files_are_sealed_whole_and_ingested_decrypted(settings):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    record = failure_record(kwargs={"password": SECRET})
    path = write_to_spool(record)
    assert SECRET not in path.read_text() and crypto.ENVELOPE_KEY in path.read_text()
    assert ingest_spool().ingested == 1
    letter = DeadLetter.objects.get(task_id=record.task_id)
    assert open_payload(letter).kwargs == {"password": SECRET} and SECRET not in raw(letter.pk)


def test_spool__a_file_no_key_opens_is_quarantined_with_the_reason(settings):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [OLD]
    write_to_spool(failure_record())
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW]
    report = ingest_spool()
    assert report.ingested == 0 and len(report.quarantined) == 1
    assert "not in DJCELERY_OPS_ENCRYPTION_KEYS" in report.quarantined[0][1]
    for path in quarantined_files():  # the test's own spool directory is shared: tidy up
        path.unlink()
        path.with_suffix(".reason").unlink(missing_ok=True)


def test_check_e010__a_value_that_is_not_a_fernet_key(settings):
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = ["not-a-key"]
    [error] = [e for e in run_checks() if e.id == "djcelery_ops.E009"]
    assert "not a Fernet key" in error.msg
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [NEW, OLD]
    assert not [e for e in run_checks() if e.id == "djcelery_ops.E009"]


def test_check_e010__keys_set_without_cryptography_installed(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # import fails
    crypto._multi_fernet.cache_clear()
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    [error] = [e for e in run_checks() if e.id == "djcelery_ops.E009"]
    assert "cryptography package is not installed" in error.msg
    assert "djcelery-ops[crypto]" in error.msg
