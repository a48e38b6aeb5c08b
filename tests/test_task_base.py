"""OpsTask defaults: from settings at each access, overridden per task."""

from __future__ import annotations

import json
import logging

from django.test import override_settings

from djcelery_ops import OpsTask, PermanentError, TransientError
from djcelery_ops.logs import JsonFormatter
from tests.testapp import tasks


def test_defaults__safe_values_without_any_setting():
    task = tasks.ops_add
    assert isinstance(task, OpsTask)
    assert (task.acks_late, task.reject_on_worker_lost) == (True, True)
    assert (task.soft_time_limit, task.time_limit, task.max_retries) == (300, 330, 5)
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
