"""celery_ops_status and the health views: broker, workers, dead letters, exit codes."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from tests.factories import dead_letter

READY = reverse("djcelery_ops:health_ready")
LIVE = reverse("djcelery_ops:health_live")


@pytest.mark.worker
def test_status__a_worker_answers__healthy_with_dead_letters_and_groups(worker):
    for _ in range(2):
        dead_letter(task_name="shop.charge")
    out = StringIO()
    call_command("celery_ops_status", "--json", "--timeout", "5", stdout=out)
    status = json.loads(out.getvalue())
    assert status["healthy"] is True and status["problem"] is None
    assert status["broker"] is None
    assert [name.split("@")[0] for name in status["workers"]] == [worker.name.split("@")[0]]
    assert status["dead_letters"] == {"pending": 2}
    [group] = status["top_groups"]
    assert group["task_name"] == "shop.charge" and group["letters"] == 2
    assert status["interrupted_replays"] == 0 and status["stuck_runs"] == 0


@pytest.mark.django_db(transaction=True)
def test_status__no_worker__exits_5_with_the_reason_on_one_line(celery_queue, settings):
    settings.DJCELERY_OPS_QUEUE_DEPTH_QUEUES = [celery_queue]
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("celery_ops_status", "--health", "--timeout", "0.5", stdout=out)
    assert raised.value.returncode == 6
    assert str(raised.value) == "unhealthy: no worker answered the ping"
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["Broker: reachable", "Workers answering: 0"]
    assert lines[2] == f"Queue depths: {celery_queue} 0"
    assert lines[3] == "Dead letters: none"
    assert lines[-1].startswith("Beat leader: none")


@pytest.mark.django_db(transaction=True)
def test_status__unreachable_broker_is_the_reason(settings, celery_queue, monkeypatch):
    from tests.celery_app import app

    # Celery's broker_url prefers the CELERY_BROKER_URL environment variable (CI sets it).
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    url = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        with pytest.raises(CommandError) as raised:
            call_command("celery_ops_status", "--health", "--timeout", "0.5", stdout=StringIO())
    finally:
        app.conf.broker_url = url
    assert str(raised.value).startswith("unhealthy: broker unreachable: ")
    assert "\n" not in str(raised.value)


@pytest.mark.django_db(transaction=True)
def test_health_views__liveness_open__readiness_needs_token_or_permission(
    client, settings, celery_queue
):
    settings.DJCELERY_OPS_METRICS_TOKEN = "scrape-me"
    dead_letter(kwargs={"password": "hunter2"})
    live = client.get(LIVE)
    assert live.status_code == 200 and live.content == b"ok\n"
    assert client.get(READY).status_code == 403
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get(READY).status_code == 403
    ready = client.get(READY, headers={"authorization": "Bearer scrape-me"})
    assert ready.status_code == 503  # no worker runs in this test
    body = ready.json()
    assert body["problem"] == "no worker answered the ping"
    assert body["dead_letters"] == {"pending": 1} and "hunter2" not in ready.content.decode()


def status_json(*env_pairs: tuple[str, str], queue: str) -> tuple[int, dict, str]:
    """``manage.py celery_ops_status --json`` in a subprocess, as a probe or cron runs it."""
    from tests.test_commands import finish, manage

    code, out, err = finish(
        manage("celery_ops_status", "--json", "--timeout", "3", DJCELERY_OPS_TEST_QUEUE=queue,
               **dict(env_pairs))
    )  # fmt: skip
    return code, json.loads(out), err


@pytest.mark.worker
def test_status_json__running_worker__stopped_worker__cut_broker(start_worker, celery_queue):
    """The done-when of issue 17: the same command against the three states, the broker
    reached through a proxy the test cuts."""
    from urllib.parse import urlsplit

    from tests.celery_app import app
    from tests.proxy import TcpProxy

    url = urlsplit(app.conf.broker_url)
    if url.scheme != "redis":
        pytest.skip("needs a TCP broker (CELERY_BROKER_URL=redis://...) to cut")
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379).start()
    through_proxy = ("CELERY_BROKER_URL", f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}")
    worker = start_worker()
    dead_letter(task_name="shop.charge")
    try:
        code, status, err = status_json(through_proxy, queue=celery_queue)
        assert (code, err) == (0, "")
        assert status["healthy"] is True and status["broker"] is None
        assert [name.split("@")[0] for name in status["workers"]] == [worker.name.split("@")[0]]
        assert status["queue_depths"][celery_queue] == 0
        assert status["dead_letters"] == {"pending": 1}
        assert status["top_groups"][0]["task_name"] == "shop.charge"
        for key in ("spool_files", "spool_quarantined", "stuck_runs", "interrupted_replays"):
            assert status[key] == 0, key
        assert status["beat_leader"] is None and status["beat_last_tick_seconds_ago"] is None

        worker.stop()
        code, status, err = status_json(through_proxy, queue=celery_queue)
        assert code == 6
        assert err == "CommandError: unhealthy: no worker answered the ping\n"
        assert status["healthy"] is False and status["workers"] == []
        assert status["queue_depths"][celery_queue] == 0  # the broker still answers

        proxy.stop()
        code, status, err = status_json(through_proxy, queue=celery_queue)
        assert code == 6
        assert err.startswith("CommandError: unhealthy: broker unreachable: ")
        assert err.count("\n") == 1
        assert status["broker"] and status["workers"] == [] and status["queue_depths"] == {}
        assert status["dead_letters"] == {"pending": 1}  # the database part still reported
    finally:
        proxy.stop()
