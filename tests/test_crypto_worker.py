"""Encryption at rest with a real worker: a secret argument is stored encrypted, shown
redacted, logged nowhere, and the replayed task (plain, and edit and replay) gets it intact."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from djcelery_ops.crypto import ENVELOPE_KEY, TEXT_PREFIX
from djcelery_ops.deadletter.services import replay
from djcelery_ops.models import DeadLetter, Replay
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = pytest.mark.worker

PASSWORD = "hunter2-Zq8"
TOKEN = "tok-77f1c0de"


def raw_row(table: str, pk: int, columns: str) -> str:
    """The columns as the database holds them (no model field in between)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {table} WHERE id = %s", [pk])  # noqa: S608
        return repr(cursor.fetchone())


def failed_sign_in(user: str, marker) -> DeadLetter:
    result = tasks.ops_sign_in.apply_async(
        (user,), {"password": PASSWORD, "marker": str(marker)}, headers={"api_token": TOKEN}
    )
    return wait_until(
        lambda: DeadLetter.objects.filter(task_id=result.id).first(),
        what=f"the dead letter of {user}'s sign-in",
    )


def test_secret_kwarg__encrypted_at_rest_redacted_everywhere_and_replayed_intact(
    settings, start_worker, tmp_path, client
):
    key = Fernet.generate_key().decode()
    settings.DJCELERY_OPS_ENCRYPTION_KEYS = [key]
    worker = start_worker(env={"DJCELERY_OPS_TEST_ENCRYPTION_KEYS": key})
    marker = tmp_path / "accept"
    plain, edited = failed_sign_in("alice", marker), failed_sign_in("bob", marker)

    for letter in (plain, edited):
        raw = raw_row("djcelery_ops_deadletter", letter.pk, "args, kwargs, options, call_body")
        assert PASSWORD not in raw and TOKEN not in raw
        assert ENVELOPE_KEY in raw and TEXT_PREFIX in raw
        assert letter.queue  # routing stays clear: the replay and the admin filter on it

    admin = User.objects.create_superuser("admin", password="pw")
    client.force_login(admin)
    page = client.get(reverse("admin:djcelery_ops_deadletter_change", args=[plain.pk]))
    html = page.content.decode()
    assert "alice" in html and "[redacted]" in html and "api_token" in html
    assert PASSWORD not in html and TOKEN not in html and ENVELOPE_KEY not in html

    marker.touch()
    replay([plain], by="ops", reason="password policy fixed")
    edit_url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[edited.pk])
    form = client.get(edit_url).content.decode()
    assert PASSWORD not in form and "[redacted]" in form
    # The operator changes the user and leaves the password as shown ("[redacted]").
    kwargs = f'{{"password": "[redacted]", "marker": "{marker}"}}'
    response = client.post(edit_url, {"args": '["carol"]', "kwargs": kwargs, "reason": "rename"})
    assert response.status_code == 302

    for user in ("alice", "carol"):
        wait_until(
            lambda user=user: Effect.objects.filter(key=f"signed-in:{user}:{PASSWORD}").exists(),
            what=f"the replayed sign-in of {user} with the real password",
        )
    edits = Replay.objects.get(dead_letter=edited)
    assert PASSWORD not in raw_row("djcelery_ops_replay", edits.pk, "edits")
    lineage = client.get(reverse("admin:djcelery_ops_deadletter_change", args=[edited.pk]))
    assert "carol" in lineage.content.decode() and PASSWORD not in lineage.content.decode()

    out = StringIO()
    call_command("celery_ops_status", "--json", "--timeout", "5", stdout=out)
    assert PASSWORD not in out.getvalue() and TOKEN not in out.getvalue()
    assert PASSWORD not in worker.log() and TOKEN not in worker.log()
    metrics = client.get("/ops/metrics")
    assert metrics.status_code == 200
    assert PASSWORD.encode() not in metrics.content and TOKEN.encode() not in metrics.content
