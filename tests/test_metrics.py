"""Prometheus metrics: counted in prefork children and beat, read through the protected view.

Each metric of the README's table is read back from the exposition text. Counts made in
the test process itself (replays published, discards: an operator's command or the admin
counts them) are read with the view outside multiprocess mode, since prometheus-client
chose its in-memory values when the test process imported it.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from djcelery_ops.deadletter.services import discard, replay
from djcelery_ops.deadletter.spool import write_to_spool
from djcelery_ops.models import DeadLetter
from djcelery_ops.queues import queue_depths
from tests.beat import BeatProcess
from tests.celery_app import app
from tests.factories import dead_letter, failure_record
from tests.utils import wait_until
from tests.worker import purge_queue

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
        # Each count is written by its own signal (success, failure, then postrun for the
        # run time), in that order: wait for the last of each, then check the labels.
        text = scrape()
        finished = (
            value(text, "djcelery_ops_tasks_succeeded_total") == 4
            and value(text, "djcelery_ops_tasks_failed_total") == 1
            and value(text, "djcelery_ops_task_runtime_seconds_count") == 6
        )
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


def scrape(client) -> str:
    response = client.get(URL, headers={"authorization": "Bearer scrape-me"})
    assert response.status_code == 200
    return response.content.decode()


def in_this_process(client, monkeypatch) -> str:
    """The view's text from this process's own registry (see the module docstring)."""
    with monkeypatch.context() as local:
        local.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        return scrape(client)


@pytest.mark.worker
def test_every_metric__read_back_from_a_prefork_worker_and_beat(
    start_worker, celery_queue, client, settings, tmp_path, monkeypatch
):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    settings.DJCELERY_OPS_METRICS_TOKEN = "scrape-me"
    idle = f"{celery_queue}-idle"  # a queue no worker consumes
    settings.DJCELERY_OPS_QUEUE_DEPTH_QUEUES = [celery_queue, idle]
    settings.DJCELERY_OPS_QUEUE_DEPTH_CACHE_SECONDS = 3600  # one measurement for the test
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(tmp_path / "spool")
    for _ in range(3):  # before the first scrape, which measures and caches the depths
        app.send_task(TASKS + "ops_add", args=[1, 2], queue=idle)
    before = in_this_process(client, monkeypatch)  # counters of this process are global
    start_worker(concurrency=2, env=env)
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="metrics-every-second",
        task=TASKS + "record_schedule_slot",
        interval=every_second,
        queue=celery_queue,
        expire_seconds=30,
    )
    beat = BeatProcess(queue=celery_queue, env=env).start()
    try:
        # A duplicate delivery of a done idempotency key: suppressed, counted.
        app.send_task(TASKS + "idem_atomic_effect", args=["m1"], queue=celery_queue)
        wait_until(
            lambda: value(scrape(client), "djcelery_ops_tasks_succeeded_total",
                          task_name=TASKS + "idem_atomic_effect") == 1,
            what="the first idempotent run", timeout=60, interval=0.5,
        )  # fmt: skip
        app.send_task(TASKS + "idem_atomic_effect", args=["m1"], queue=celery_queue)
        app.send_task(TASKS + "ops_raise", args=["boom"], queue=celery_queue)
        letter = wait_until(DeadLetter.objects.first, what="a dead letter", timeout=60)
        replay([letter], by="metrics test", reason="read the replay counters")
        discard([dead_letter(task_name="shop.old")], by="metrics test", reason="obsolete")
        write_to_spool(failure_record(task_name="shop.spooled"))

        def done() -> str | None:
            text = scrape(client)
            ready = (
                value(text, "djcelery_ops_replays_finished_total", outcome="failed") == 1
                and value(text, "djcelery_ops_beat_dispatches_total") >= 1
                and value(text, "djcelery_ops_idempotency_duplicates_suppressed_total") == 1
                # Beat sends a task a second: a scrape can fall while one is being recorded.
                and "djcelery_ops_recorder_backlog" in text
                and value(text, "djcelery_ops_recorder_backlog") == 0
            )
            return text if ready else None

        text = wait_until(
            done,
            what="the replay, a beat dispatch, the duplicate and an empty recorder backlog",
            timeout=90,
            interval=0.5,
        )
    finally:
        beat.stop()
        purge_queue(idle)
    idem = TASKS + "idem_atomic_effect"
    assert value(text, "djcelery_ops_idempotency_duplicates_suppressed_total", task_name=idem) == 1
    assert value(text, "djcelery_ops_tasks_succeeded_total", task_name=idem) == 2
    assert value(text, "djcelery_ops_dead_letters_total", task_name=TASKS + "ops_raise") == 2
    assert value(text, "djcelery_ops_beat_leader_changes_total", change="acquired") == 1
    assert value(text, "djcelery_ops_beat_dispatches_total",
                 task_name=TASKS + "record_schedule_slot") >= 1  # fmt: skip
    # The recorder's backlog gauge (one per live process, summed) was read at 0 above.
    assert value(text, "djcelery_ops_queue_depth", queue=idle) == 3
    assert value(text, "djcelery_ops_queue_depth", queue=celery_queue) == 0
    assert value(text, "djcelery_ops_queue_depth_up") == 1
    assert value(text, "djcelery_ops_spool_files", state="waiting") == 1
    assert value(text, "djcelery_ops_spool_files", state="quarantined") == 0

    # Cached: the queue purged (in ``finally``) and a message added do not show until the
    # cache period ends; a fresh read (the status command's) sees them.
    app.send_task(TASKS + "ops_add", args=[1, 2], queue=idle)
    assert value(scrape(client), "djcelery_ops_queue_depth", queue=idle) == 3
    assert queue_depths(fresh=True)[idle] == 1
    purge_queue(idle)

    after = in_this_process(client, monkeypatch)
    for name, labels, added in (
        ("djcelery_ops_replays_published_total", {"outcome": "published"}, 1),
        ("djcelery_ops_discards_total", {"outcome": "discarded"}, 1),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == added, name
    for forbidden in ("boom", "m1", letter.task_id):  # never arguments or task ids
        assert forbidden not in text + after


@pytest.mark.django_db
def test_recorder_drops_and_leader_changes__counted_by_reason(client, settings, monkeypatch):
    """The recorder's buffer full (capacity 20 at a batch size of 1) and a beat stepping
    down, in this process (a worker's and a beat's counts are read above)."""
    from djcelery_ops.runs.recorder import RunRecorder
    from djcelery_ops.schedules.scheduler import LockedDatabaseScheduler

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings.DJCELERY_OPS_METRICS_TOKEN = "scrape-me"
    settings.DJCELERY_OPS_RUNS_BATCH_SIZE = 1
    before = scrape(client)
    recorder = RunRecorder(start_writer=False)
    for number in range(22):
        recorder.add({"task_id": f"dropped-{number}"})
    scheduler = LockedDatabaseScheduler(app=app, lazy=True)
    assert scheduler.hold_lease()
    scheduler._step_down("a test")
    after = scrape(client)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert recorder.dropped == 2
    assert added("djcelery_ops_recorder_dropped_events_total", reason="buffer_full") == 2
    assert added("djcelery_ops_beat_leader_changes_total", change="acquired") == 1
    assert added("djcelery_ops_beat_leader_changes_total", change="lost") == 1
    assert "dropped-" not in after


def test_an_empty_metrics_file_does_not_fail_the_scrape(tmp_path, monkeypatch):
    # A process creates its file empty and sizes it a moment later; a scrape in between,
    # or after that process died in between, must still answer with everyone else's values.
    from djcelery_ops.metrics import exposition

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_4242.db").write_bytes(b"")
    text, _ = exposition()
    assert "djcelery_ops_" in text.decode()
