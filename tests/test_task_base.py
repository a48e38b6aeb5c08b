"""OpsTask defaults: the task's option, then DJCELERY_OPS_*, then Celery's, then safe ones."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from celery import Celery
from django.conf import settings as django_settings
from django.test import override_settings

from djcelery_ops import OpsTask, PermanentError, TransientError
from djcelery_ops.logs import JsonFormatter
from djcelery_ops.models import DeadLetter
from djcelery_ops.task.request import requeues_on_timeout
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until
from tests.worker import settle


def test_defaults__safe_values_without_any_setting():
    task = tasks.ops_add
    assert isinstance(task, OpsTask)
    assert (task.acks_late, task.reject_on_worker_lost) == (True, True)
    assert (task.soft_time_limit, task.time_limit, task.max_retries) == (300, 330, 5)
    assert task.acks_on_failure_or_timeout is True
    assert (task.acks_on_failure, task.acks_on_timeout) == (True, True)
    assert task.Request == "djcelery_ops.task.request:OpsRequest"


def test_defaults__project_settings_apply_at_each_access():
    with override_settings(DJCELERY_OPS_TASK_ACKS_LATE=False, DJCELERY_OPS_TASK_TIME_LIMIT=90):
        assert tasks.ops_add.acks_late is False
        assert tasks.ops_add.time_limit == 90
    assert tasks.ops_add.acks_late is True


def test_per_task_options__win_over_settings():
    with override_settings(DJCELERY_OPS_TASK_MAX_RETRIES=9, DJCELERY_OPS_TASK_TIME_LIMIT=90):
        assert tasks.ops_always_transient.max_retries == 2
        assert tasks.ops_hard_limit.time_limit == 1
        assert tasks.ops_hard_limit.soft_time_limit is None
        assert tasks.ops_add.max_retries == 9
    assert tasks.ops_kill_child.reject_on_worker_lost is False


def test_error_classes__drive_celery_autoretry():
    task = tasks.ops_add
    assert TransientError in task.autoretry_for and ConnectionError in task.autoretry_for
    assert task.dont_autoretry_for == (PermanentError,)
    # Celery wrapped run() at registration because autoretry_for is not empty.
    assert hasattr(tasks.ops_always_transient, "_orig_run")


def test_task_body__runs_eagerly_like_a_function():
    assert tasks.ops_add.apply((2, 3)).get() == 5


def test_json_formatter__one_object_with_the_event_fields():
    record = logging.LogRecord("djcelery_ops.task", logging.INFO, __file__, 1, "msg", (), None)
    record.ops = {"event": "task.succeeded", "task_id": "t1", "duration": 0.5}
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["event"] == "task.succeeded"
    assert (data["task_id"], data["duration"], data["level"]) == ("t1", 0.5, "INFO")


def test_soft_time_limit__stays_below_a_tasks_shorter_hard_limit():
    class Short(OpsTask):
        time_limit = 60

    class Tiny(OpsTask):
        time_limit = 2

    assert Short().soft_time_limit == 54
    assert Tiny().soft_time_limit == 1.8
    with override_settings(DJCELERY_OPS_TASK_SOFT_TIME_LIMIT=20):
        assert Short().soft_time_limit == 20
    assert tasks.ops_add.soft_time_limit == 300  # the default, below the default hard 330


# --- Precedence: task option > DJCELERY_OPS_* > the project's Celery setting > default ------


def celery_app(**conf) -> Celery:
    """A Celery app of the test's own whose configuration sets ``conf``."""
    app = Celery(f"precedence-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.conf.update(conf)
    return app


def ops_task_of(app: Celery, **options) -> OpsTask:
    def body() -> None:
        return None

    name = f"tests.precedence.{uuid.uuid4().hex[:8]}"
    return app.task(base=OpsTask, shared=False, name=name, **options)(body)


def test_precedence__the_tasks_own_option_beats_every_setting(settings):
    settings.DJCELERY_OPS_TASK_TIME_LIMIT = 90
    settings.DJCELERY_OPS_TASK_ACKS_LATE = True
    app = celery_app(task_time_limit=77, task_acks_late=True)
    task = ops_task_of(app, time_limit=5, acks_late=False, acks_on_failure_or_timeout=False)
    assert (task.time_limit, task.acks_late, task.acks_on_failure_or_timeout) == (5, False, False)
    assert task.acks_on_timeout is False  # follows acks_on_failure_or_timeout (Celery 5.7)


def test_precedence__a_djcelery_ops_setting_beats_the_celery_setting(settings):
    task = ops_task_of(celery_app(task_time_limit=77, task_acks_late=False))
    settings.DJCELERY_OPS_TASK_TIME_LIMIT = 90
    settings.DJCELERY_OPS_TASK_ACKS_LATE = True
    assert (task.time_limit, task.acks_late) == (90, True)


def test_precedence__the_projects_celery_settings_apply_without_djcelery_ops_ones():
    app = celery_app(
        task_time_limit=77, task_acks_late=False, task_acks_on_failure_or_timeout=False
    )
    task = ops_task_of(app)
    assert (task.time_limit, task.acks_late) == (77, False)
    assert task.soft_time_limit == pytest.approx(69.3)  # kept below the shorter hard limit
    assert (task.acks_on_failure_or_timeout, task.acks_on_timeout) == (False, False)
    assert task.reject_on_worker_lost is True  # not set in Celery: djcelery_ops' default


def test_precedence__celery_settings_from_django_settings_count(settings):
    settings.CELERY_TASK_TIME_LIMIT = 40
    settings.CELERY_TASK_REJECT_ON_WORKER_LOST = False
    app = Celery(f"django-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    task = ops_task_of(app)
    assert (task.time_limit, task.reject_on_worker_lost) == (40, False)
    assert task.acks_late is True  # CELERY_TASK_ACKS_LATE left to Celery's default (False)


def test_precedence__nothing_set_gives_the_safe_defaults():
    task = ops_task_of(celery_app())
    assert (task.acks_late, task.reject_on_worker_lost) == (True, True)
    assert (task.soft_time_limit, task.time_limit) == (300, 330)
    assert (task.max_retries, task.retry_backoff, task.retry_backoff_max) == (5, 2, 600)
    assert task.retry_jitter is True
    assert (task.acks_on_failure_or_timeout, task.acks_on_failure, task.acks_on_timeout) == (
        True,
        True,
        True,
    )


# --- A hard time limit is dead-lettered only when Celery does not requeue the message -------


def test_requeues_on_timeout__follows_the_options_celery_reads():
    assert requeues_on_timeout(tasks.ops_hard_limit) is False
    assert requeues_on_timeout(tasks.ops_hard_limit_requeued) is True
    early_ack = ops_task_of(celery_app(), acks_late=False, acks_on_failure_or_timeout=False)
    assert requeues_on_timeout(early_ack) is False  # acked before it ran: nothing to requeue
    from_celery = ops_task_of(celery_app(task_acks_on_failure_or_timeout=False))
    assert requeues_on_timeout(from_celery) is True


redelivering_broker = pytest.mark.skipif(
    django_settings.CELERY_BROKER_URL.startswith("filesystem"),
    reason="kombu's file-system broker cannot requeue a rejected message; runs on Redis",
)


@pytest.mark.worker
def test_hard_time_limit__requeued_is_not_dead_lettered_final_is_once(worker):
    requeued = tasks.ops_hard_limit_requeued.delay("requeued")
    final = tasks.ops_hard_limit.delay()
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=final.id).first(), what="the final one"
    )
    assert letter.reason == DeadLetter.Reason.HARD_TIME_LIMIT
    wait_until(
        lambda: f"exceeded for {tasks.ops_hard_limit_requeued.name}[{requeued.id}]" in worker.log(),
        what="the requeued task to hit its limit",
    )
    settle(1)  # the dead letter, if any, is written right after that log line
    assert list(DeadLetter.objects.values_list("task_id", flat=True)) == [final.id]


@redelivering_broker
@pytest.mark.worker
def test_hard_time_limit__requeued_message_runs_again(worker):
    result = tasks.ops_hard_limit_requeued.delay("again")
    wait_until(lambda: Effect.objects.filter(key="again").count() >= 2, what="a second run")
    assert set(Effect.objects.filter(key="again").values_list("task_id", flat=True)) == {result.id}
    assert not DeadLetter.objects.filter(task_id=result.id).exists()
