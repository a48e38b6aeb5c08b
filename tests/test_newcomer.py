"""The newcomer's path (issue 16): what a project that follows the README sees first."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
import requests
from celery import Celery
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from djcelery_ops import TransientError, ops_task
from djcelery_ops import checks as ops_checks
from djcelery_ops.models import DeadLetter
from djcelery_ops.schedules.run_now import run_now
from tests.factories import dead_letter

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
celery_state = importlib.import_module("celery._state")


@contextlib.contextmanager
def current_celery_app(app: Celery | None) -> Iterator[None]:
    """Make ``app`` Celery's current app; ``None``: no project app, as when the project's
    ``__init__.py`` does not import its Celery app (Celery then makes its fallback app)."""
    saved = celery_state._tls.current_app, celery_state.default_app
    celery_state._tls.current_app, celery_state.default_app = app, None
    try:
        yield
    finally:
        celery_state._tls.current_app, celery_state.default_app = saved


def python_block_after(marker: str) -> str:
    """The python block that follows ``<!-- marker -->`` in the README."""
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)\n *```", README, re.S)
    assert match, f"README has no python block after <!-- {marker} -->"
    return textwrap.dedent(match.group(1)) + "\n"


# --- Item 4: the project's Celery app must be loaded -------------------------------------


def test_e007__celery_fallback_app_is_an_error():
    with current_celery_app(None):
        errors = ops_checks.check_project_celery_app()
    assert [e.id for e in errors] == ["djcelery_ops.E007"]
    assert "Celery's fallback app" in errors[0].msg
    assert "from .celery import app as celery_app" in errors[0].hint


def test_e007__a_project_app_without_broker_url_is_an_error(monkeypatch):
    # Celery's broker_url prefers the CELERY_BROKER_URL environment variable (CI sets it).
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = Celery("proj", set_as_current=False)
    with current_celery_app(app):
        errors = ops_checks.check_project_celery_app()
    assert [e.id for e in errors] == ["djcelery_ops.E007"]
    assert "no broker URL" in errors[0].msg
    assert "CELERY_BROKER_URL" in errors[0].hint


def test_e007__a_configured_project_app_passes():
    app = Celery("proj", set_as_current=False, broker="redis://127.0.0.1:6379/6")
    with current_celery_app(app):
        assert ops_checks.check_project_celery_app() == []


@pytest.mark.django_db(transaction=True)
def test_replay__refuses_to_publish_with_celery_fallback_app():
    letter = dead_letter()
    with current_celery_app(None), pytest.raises(CommandError) as raised:
        call_command(
            "replay_dead_letters", "--id", str(letter.pk), "--reason", "r", stdout=StringIO()
        )
    assert "nothing was replayed" in str(raised.value)
    assert "Celery's fallback app" in str(raised.value)
    assert raised.value.returncode == 3
    # Refused before the claim: the dead letter is still pending, no replay row.
    letter.refresh_from_db()
    assert letter.status == "pending" and not letter.replays.exists()


@pytest.mark.django_db
def test_run_now__refuses_to_send_with_celery_fallback_app():
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)
    task = PeriodicTask.objects.create(name="daily", task="x", interval=interval)
    with current_celery_app(None), pytest.raises(ImproperlyConfigured, match="fallback app"):
        run_now(task, requested_by="admin")


# --- Item 2: retry_for and the exception class in the logs ---------------------------------


@ops_task(retry_for=(TransientError, requests.ConnectionError, requests.Timeout), max_retries=1)
def call_refusing_endpoint() -> None:
    raise requests.ConnectionError("[Errno 111] Connection refused")


def test_retry_for__requests_connection_error_is_not_the_builtin_one():
    # Why the README lists requests.ConnectionError: the default retry_for misses it.
    assert not issubclass(requests.ConnectionError, ConnectionError)
    assert not issubclass(requests.Timeout, TimeoutError)


@pytest.mark.django_db
def test_task_logs__name_the_exception_class_with_its_module(caplog):
    caplog.set_level(logging.INFO, logger="djcelery_ops")
    result = call_refusing_endpoint.apply()
    events = {r.ops["event"]: r.ops["exception_class"] for r in caplog.records if hasattr(r, "ops")}
    assert events["task.retry"] == "requests.exceptions.ConnectionError"
    assert events["task.failed"] == "requests.exceptions.ConnectionError"
    assert "exception_class=requests.exceptions.ConnectionError" in caplog.text
    letter = DeadLetter.objects.get(task_id=result.id)
    assert letter.exception_class == "requests.exceptions.ConnectionError"


# --- Item 3: the README's LOGGING block, pasted as is -------------------------------------

LOGGING_PROBE = """
import json, logging, logging.config, sys
# Celery's modules create their loggers at import, before Django applies LOGGING.
celery_logger = logging.getLogger("celery.worker.consumer")
namespace = {}
exec(sys.stdin.read(), namespace)
logging.config.dictConfig(namespace["LOGGING"])
# Then the worker gives the root logger a handler (worker_hijack_root_logger).
root = logging.getLogger()
root.addHandler(logging.StreamHandler())
root.setLevel(logging.INFO)
from djcelery_ops.logs import log_event
log_event("task.succeeded", task_id="t-1", task_name="proj.tasks.ping")
celery_logger.warning("Connected to redis://127.0.0.1:6379/0")
"""


def test_readme_logging__each_line_once_and_celery_lines_kept():
    block = python_block_after("logging-block")
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE],
        input=block,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert json.loads(lines[0])["event"] == "task.succeeded"
    assert lines[1] == "Connected to redis://127.0.0.1:6379/0"


# --- Item 5: the README's installation, pasted into a new project -------------------------


def readme_project(tmp_path: Path, *, load_celery_app: bool = True) -> Path:
    """``startproject proj``, then the README's steps 1 to 3 as they are written."""
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "proj", str(tmp_path)],
        check=True,
        timeout=60,
    )
    package = tmp_path / "proj"
    (package / "celery.py").write_text(python_block_after("celery-app-block"))
    if load_celery_app:
        (package / "__init__.py").write_text(python_block_after("init-block"))
    with (package / "settings.py").open("a") as settings_file:
        settings_file.write(
            '\nINSTALLED_APPS += ["django_celery_beat", "django_celery_results", "djcelery_ops"]\n'
        )
        settings_file.write(python_block_after("settings-block"))
    return tmp_path


def check_deploy(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_settings__check_deploy_reports_nothing_of_djcelery_ops(tmp_path):
    result = check_deploy(readme_project(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "security.W" in output  # Django's own deploy checks did run
    assert "djcelery_ops." not in output


def test_readme_settings__on_postgresql_keep_the_worker_connection(tmp_path):
    # W005 is a database check: ``check --database`` runs it (so does ``migrate``).
    project = readme_project(tmp_path)
    with (project / "proj" / "settings.py").open("a") as settings_file:
        settings_file.write(
            '\nDATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", '
            '"NAME": "test", "HOST": "127.0.0.1", "USER": "postgres"}}\n'
        )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "djcelery_ops.W005" not in result.stdout + result.stderr


def test_readme_settings__without_the_init_import_e007_stops_check(tmp_path):
    result = check_deploy(readme_project(tmp_path, load_celery_app=False))
    assert result.returncode == 1
    assert "djcelery_ops.E007" in result.stderr
    assert "from .celery import app as celery_app" in result.stderr


# --- Friction: one beat identity per process -----------------------------------------------


@pytest.mark.django_db
def test_beat_banner__shows_the_identity_that_then_leads(monkeypatch):
    from celery.beat import Service

    from djcelery_ops.schedules import scheduler as scheduler_module
    from tests.celery_app import app

    monkeypatch.setattr(scheduler_module, "_process_holders", {}, raising=False)
    monkeypatch.setattr(scheduler_module, "_taken_holders", set(), raising=False)
    settings_name = "djcelery_ops.schedules.scheduler:LockedDatabaseScheduler"
    service = Service(app, scheduler_cls=settings_name)
    # What ``celery beat`` does: a throwaway lazy scheduler for the banner, then its own.
    banner = service.get_scheduler(lazy=True).info
    running = service.get_scheduler(lazy=True)
    assert running.hold_lease()
    assert f"(standby, {running.lease_holder})" in banner
    other = service.get_scheduler(lazy=True)  # a second scheduler in one process contends
    assert other.lease_holder != running.lease_holder
    assert not other.hold_lease()


# --- Friction: every schedule problem in one pass --------------------------------------------

TASK = "tests.testapp.tasks.ops_add"
BROKEN_SCHEDULES = [
    {"name": "ok", "task": TASK, "interval": 60},
    {"name": "ghost", "task": "shop.tasks.gone", "interval": 60},
    {"name": "dup", "task": TASK, "interval": "every minute"},
    {"name": "dup", "task": TASK, "crontab": 5},
    {"task": TASK, "interval": 60, "kwrags": {}},
    {"name": "ok", "task": TASK, "interval": 30, "timezone": 1},
]
EXPECTED_PROBLEMS = [
    "schedule 'ghost': unknown task 'shop.tasks.gone' (not registered with the Celery app)",
    "schedule 'dup': interval must be seconds (a number) or a timedelta, got 'every minute'",
    "schedule 'dup': crontab must be a string like '0 3 * * *', got 5",
    "schedule '#4': unknown field(s) kwrags",
    "schedule '#4': missing name",
    "schedule 'ok': unknown timezone 1",
    "schedule 'ok': declared more than once (2 times)",
    "schedule 'dup': declared more than once (2 times)",
]


def test_e101__lists_every_problem_unknown_tasks_and_duplicates_included(settings):
    settings.DJCELERY_OPS_SCHEDULES = BROKEN_SCHEDULES
    errors = ops_checks.check_schedule_declarations()
    assert {e.id for e in errors} == {"djcelery_ops.E101"}
    assert [e.msg for e in errors] == EXPECTED_PROBLEMS


@pytest.mark.django_db
def test_sync__lists_every_problem_and_the_names_admin_rows_hold_in_one_pass(settings):
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)
    PeriodicTask.objects.create(name="handmade", task=TASK, interval=interval)
    settings.DJCELERY_OPS_SCHEDULES = [
        *BROKEN_SCHEDULES,
        {"name": "handmade", "task": TASK, "interval": 60},
    ]
    with pytest.raises(CommandError) as raised:
        call_command("sync_celery_schedules", stdout=StringIO())
    assert str(raised.value).splitlines() == [
        "Invalid schedules, nothing written:",
        *EXPECTED_PROBLEMS,
        "schedule 'handmade': a periodic task of that name exists and was not created by "
        "sync_celery_schedules; rename the declaration, delete the row, or use --force to "
        "adopt it",
    ]
    assert PeriodicTask.objects.count() == 1


@pytest.mark.django_db
def test_sync_dry_run__shows_each_changed_value_old_and_new(settings):
    declared = {"name": "nightly", "task": TASK, "crontab": "0 3 * * *", "kwargs": {"key": "v1"}}
    settings.DJCELERY_OPS_SCHEDULES = [declared]
    call_command("sync_celery_schedules", stdout=StringIO())
    settings.DJCELERY_OPS_SCHEDULES = [
        {**declared, "kwargs": {"key": "v2"}, "crontab": "30 4 * * *", "queue": "low"}
    ]
    out = StringIO()
    call_command("sync_celery_schedules", "--dry-run", stdout=out)
    assert out.getvalue() == (
        "Would update nightly: schedule, kwargs, queue\n"
        '  schedule: "crontab 0 3 * * * UTC" -> "crontab 30 4 * * * UTC"\n'
        '  kwargs: {"key": "v1"} -> {"key": "v2"}\n'
        '  queue: null -> "low"\n'
        "Would sync 1 schedule: 1 update.\n"
    )
