"""Prometheus metrics: counted in prefork children, read through the protected view."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from djcelery_ops.models import DeadLetter
from tests.celery_app import app
from tests.utils import wait_until

URL = reverse("djcelery_ops:metrics")
TASKS = "tests.testapp.tasks."


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(
        number
        for (sample, sample_labels), number in samples(text).items()
        if sample == name and wanted <= sample_labels
    )


@pytest.mark.django_db
def test_metrics_view__refuses_anonymous_and_staff_without_permission_or_token(client, settings):
    settings.DJCELERY_OPS_METRICS_TOKEN = "scrape-me"
    assert client.get(URL).status_code == 403
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(URL).status_code == 403
    assert client.get(URL, headers={"authorization": "Bearer wrong"}).status_code == 403
    assert client.get(URL, headers={"authorization": "Bearer scrape-me"}).status_code == 200
    staff.user_permissions.add(Permission.objects.get(codename="view_metrics"))
    client.force_login(User.objects.get(pk=staff.pk))  # a fresh permission cache
    assert client.get(URL).status_code == 200


@pytest.mark.django_db
def test_metrics_view__no_token_setting_opens_nothing(client):
    assert client.get(URL, headers={"authorization": "Bearer "}).status_code == 403
    assert client.get(URL, headers={"authorization": "Bearer None"}).status_code == 403


@pytest.mark.worker
def test_prefork_children_count_tasks_read_through_the_view(
    start_worker, celery_queue, client, settings, tmp_path, monkeypatch
):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    worker = start_worker(concurrency=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    settings.DJCELERY_OPS_METRICS_TOKEN = "scrape-me"
    for _ in range(3):
        app.send_task(TASKS + "ops_add", args=[1, 2], queue=celery_queue)
    app.send_task(TASKS + "ops_raise", args=["boom"], queue=celery_queue)
    app.send_task(TASKS + "ops_transient_once", args=["k1"], queue=celery_queue)

    def scrape() -> str:
        response = client.get(URL, headers={"authorization": "Bearer scrape-me"})
        assert response.status_code == 200
        return response.content.decode()

    def done() -> str | None:
        text = scrape()
        finished = value(text, "djcelery_ops_tasks_succeeded_total") == 4
        return text if finished and DeadLetter.objects.exists() else None

    text = wait_until(done, what="five tasks to finish", timeout=60)
    queue = {"queue": celery_queue}
    assert (
        value(text, "djcelery_ops_tasks_started_total", task_name=TASKS + "ops_add", **queue) == 3
    )
    assert value(text, "djcelery_ops_tasks_succeeded_total", task_name=TASKS + "ops_add") == 3
    assert value(text, "djcelery_ops_tasks_failed_total", task_name=TASKS + "ops_raise") == 1
    assert (
        value(text, "djcelery_ops_tasks_retried_total", task_name=TASKS + "ops_transient_once") == 1
    )
    assert (
        value(text, "djcelery_ops_tasks_started_total", task_name=TASKS + "ops_transient_once") == 2
    )
    assert value(text, "djcelery_ops_dead_letters_total", reason="exception") == 1
    assert value(text, "djcelery_ops_task_runtime_seconds_count") == 6
    assert len(worker.child_pids()) == 2
    assert len(list(tmp_path.glob("counter_*.db"))) >= 1  # written by the children
    for forbidden in ("boom", "k1"):  # labels never carry arguments or messages
        assert forbidden not in text
