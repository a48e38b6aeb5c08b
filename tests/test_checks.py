"""System checks: one test per id, through Django's check framework where it matters."""

from __future__ import annotations

import typing

import pytest
from django.conf import settings
from django.core import checks
from django.db import connections

from djcelery_ops import checks as ops_checks
from djcelery_ops.conf import OpsSettings, ops_settings


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [message.id or "" for message in messages]


def ops_ids(**options: typing.Any) -> list[str]:
    """Ids of djcelery_ops reported by ``run_checks``, as ``manage.py check`` does."""
    found = ids(checks.run_checks(**options))
    silenced = set(settings.SILENCED_SYSTEM_CHECKS)  # dropped by the command, not run_checks
    return [i for i in found if i.startswith("djcelery_ops.") and i not in silenced]


def test_a_complete_installation__reports_nothing():
    assert ops_ids() == []
    assert ops_ids(include_deployment_checks=True) == []  # the test settings set a spool dir


def test_e001__django_celery_beat_is_required(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_celery_beat"]
    errors = ops_checks.check_required_apps()
    assert ids(errors) == ["djcelery_ops.E001"]
    assert (
        errors[0].hint
        == "Add 'django_celery_beat' to INSTALLED_APPS; djcelery_ops reads its tables."
    )


def test_e001__django_celery_results_is_not_required(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_celery_results"]
    assert ops_checks.check_required_apps() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUNS_BATCH_SIZE", True),  # a bool is an int to Python, not to a batch size
        ("RUNS_BATCH_SIZE", "2000"),
        ("RUNS_BATCH_SIZE", 2000.0),
        ("TASK_TIME_LIMIT", "330"),
        ("TASK_ACKS_LATE", "yes"),
        ("DEAD_LETTER_SPOOL_DIR", 42),
        ("SCHEDULES", {"name": "a"}),
    ],
)
def test_e002__a_setting_of_the_wrong_type_is_an_error(settings, name, value):
    setattr(settings, f"DJCELERY_OPS_{name}", value)
    errors = ops_checks.check_setting_types()
    assert ids(errors) == ["djcelery_ops.E002"]
    assert errors[0].msg.startswith(f"DJCELERY_OPS_{name} is {value!r} ({type(value).__name__})")
    assert errors[0].hint.startswith(f"Set DJCELERY_OPS_{name} to a ")
    assert "djcelery_ops.E002" in ops_ids()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASK_TIME_LIMIT", 30),  # an int where a float is annotated
        ("TASK_TIME_LIMIT", None),
        ("TASK_MAX_RETRIES", None),
        ("SCHEDULES", ()),
        ("SCHEDULES", "tests.nowhere.SCHEDULES"),
    ],
)
def test_e002__accepted_types_are_not_reported(settings, name, value):
    setattr(settings, f"DJCELERY_OPS_{name}", value)
    assert ops_checks.check_setting_types() == []


def test_e002__every_documented_default_has_its_own_type():
    for name in ops_settings.names():
        assert ops_checks.has_setting_type(name, getattr(OpsSettings, name)), name


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("RUNS_BATCH_SIZE", 0, "must be greater than 0"),
        ("DEAD_LETTER_REPLAY_BATCH_SIZE", -5, "must be greater than 0"),
        ("DEAD_LETTER_MAX_DELIVERIES", 0, "must be greater than 0"),
        ("DEAD_LETTER_MAX_PAYLOAD_BYTES", -1, "must be greater than 0"),
        ("RUNS_FLUSH_INTERVAL", 0.0, "must be greater than 0"),
        ("BEAT_LEASE_SECONDS", 0, "must be greater than 0"),
        ("IDEMPOTENCY_KEY_TTL_SECONDS", 0, "must be greater than 0"),
        ("TASK_MAX_RETRIES", -1, "must not be negative"),
        ("BEAT_LEASE_NAME", " ", "must not be empty"),
        ("SCHEDULE_DEFAULT_TIMEZONE", "Mars/Olympus", "is not a timezone name"),
    ],
)
def test_e003__a_value_out_of_range_is_an_error(settings, name, value, problem):
    setattr(settings, f"DJCELERY_OPS_{name}", value)
    errors = ops_checks.check_setting_ranges()
    assert ids(errors) == ["djcelery_ops.E003"]
    assert errors[0].msg.startswith(f"DJCELERY_OPS_{name} is {value!r}: it {problem}")
    assert f"(default {getattr(OpsSettings, name)!r})" in errors[0].hint


def test_e003__limits_of_the_range_are_accepted(settings):
    settings.DJCELERY_OPS_TASK_MAX_RETRIES = 0
    settings.DJCELERY_OPS_TASK_RETRY_BACKOFF = 0
    settings.DJCELERY_OPS_IDEMPOTENCY_KEY_TTL_SECONDS = None
    settings.DJCELERY_OPS_RUNS_BATCH_SIZE = 1
    settings.DJCELERY_OPS_SCHEDULE_DEFAULT_TIMEZONE = "Europe/Paris"
    assert ops_checks.check_setting_ranges() == []


def test_e003__every_numeric_setting_has_a_range():
    numeric = {
        name
        for name in ops_settings.names()
        if ops_checks.has_setting_type(name, 1) and not ops_checks.has_setting_type(name, "")
    }
    assert numeric == ops_checks.POSITIVE | ops_checks.NON_NEGATIVE


def test_e004__an_unknown_idempotency_mode_is_an_error(settings):
    settings.DJCELERY_OPS_IDEMPOTENCY_DEFAULT_MODE = "leased"
    errors = ops_checks.check_idempotency_mode()
    assert ids(errors) == ["djcelery_ops.E004"]
    assert '"atomic"' in errors[0].hint and '"lease"' in errors[0].hint
    settings.DJCELERY_OPS_IDEMPOTENCY_DEFAULT_MODE = "lease"
    assert ops_checks.check_idempotency_mode() == []


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("tests.nowhere.app", "cannot be imported"),
        ("tests.celery_app.announce_ready", "is a function, not a Celery app"),
    ],
)
def test_e005__dead_letter_celery_app_must_name_a_celery_app(settings, path, problem):
    settings.DJCELERY_OPS_DEAD_LETTER_CELERY_APP = path
    errors = ops_checks.check_dead_letter_celery_app()
    assert ids(errors) == ["djcelery_ops.E005"]
    assert problem in errors[0].msg


def test_e005__a_celery_app_path_is_accepted(settings):
    settings.DJCELERY_OPS_DEAD_LETTER_CELERY_APP = "tests.celery_app.app"
    assert ops_checks.check_dead_letter_celery_app() == []


class _OpsTablesElsewhere:
    """A project's router that keeps djcelery_ops' tables on another database."""

    def db_for_write(self, model: type, **hints: typing.Any) -> str | None:
        return "legacy" if model._meta.app_label == "djcelery_ops" else None


@pytest.fixture
def legacy_database(settings):
    # Django's own dummy backend stands for a vendor djcelery_ops does not support; the
    # check reads the backend's vendor and never connects.
    connections.settings["legacy"] = {
        **connections.settings["default"],
        "ENGINE": "django.db.backends.dummy",
    }
    settings.DATABASE_ROUTERS = [_OpsTablesElsewhere()]
    yield "legacy"
    del connections["legacy"]
    del connections.settings["legacy"]


def test_e006__tables_on_an_unsupported_database_vendor_are_an_error(legacy_database):
    errors = ops_checks.check_database_vendor()
    assert ids(errors) == ["djcelery_ops.E006"]
    assert errors[0].msg.startswith("Database 'legacy' holds djcelery_ops' tables but is unknown")
    assert "djcelery_ops.E006" in ops_ids()


def test_e006__the_test_database_is_supported():
    assert connections["default"].vendor in ("postgresql", "sqlite")
    assert ops_checks.check_database_vendor() == []


def test_w001__spool_dir_is_a_deployment_check(settings):
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = None
    assert "djcelery_ops.W001" not in ops_ids()
    assert "djcelery_ops.W001" in ops_ids(include_deployment_checks=True)


def test_w002__is_registered_with_the_other_checks(settings, monkeypatch):
    from tests.celery_app import app

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    settings.DJCELERY_OPS_TASK_TIME_LIMIT = 7200
    assert app.conf.broker_transport_options.get("visibility_timeout") is None
    assert "djcelery_ops.W002" in ops_ids()


def test_w003__soft_time_limit_not_below_hard_is_a_warning(settings):
    settings.DJCELERY_OPS_TASK_SOFT_TIME_LIMIT = 400
    warnings = ops_checks.check_soft_below_hard_time_limit()
    assert ids(warnings) == ["djcelery_ops.W003"]
    assert "OpsTask tasks get a soft limit of 300s" in warnings[0].msg
    settings.DJCELERY_OPS_TASK_SOFT_TIME_LIMIT = 329
    assert ops_checks.check_soft_below_hard_time_limit() == []
    settings.DJCELERY_OPS_TASK_TIME_LIMIT = None
    settings.DJCELERY_OPS_TASK_SOFT_TIME_LIMIT = 400
    assert ops_checks.check_soft_below_hard_time_limit() == []


def test_w102__a_lease_of_the_wrong_type_is_left_to_e002(settings):
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = "1"
    assert ops_checks.check_lease_seconds() == []
    assert "djcelery_ops.E002" in ops_ids()


def test_e101__schedules_of_the_wrong_type_are_left_to_e002(settings):
    settings.DJCELERY_OPS_SCHEDULES = 7
    assert ops_checks.check_schedule_declarations() == []


# --- The Celery and Django configuration djcelery_ops relies on (checks/celery_config.py) ---


@pytest.fixture
def celery_conf():
    """The tests' Celery app configuration, restored after the test."""
    from tests.celery_app import app

    saved = {key: app.conf[key] for key in ("accept_content", "result_backend", "result_expires")}
    saved_reuse = app.conf.get("db_reuse_max")
    yield app.conf
    app.conf.update(saved)
    app.conf["db_reuse_max"] = saved_reuse


@pytest.mark.parametrize(
    "accepted", [["json", "pickle"], ["application/x-python-serialize"], ("pickle",)]
)
def test_e008__pickle_accepted_by_the_worker_is_an_error(celery_conf, accepted):
    celery_conf.accept_content = accepted
    errors = ops_checks.check_pickle_not_accepted()
    assert ids(errors) == ["djcelery_ops.E008"]
    assert 'CELERY_ACCEPT_CONTENT = ["json"]' in errors[0].hint
    assert "djcelery_ops.E008" in ops_ids()
    celery_conf.accept_content = ["json", "application/x-yaml"]
    assert ops_checks.check_pickle_not_accepted() == []


@pytest.mark.parametrize(
    ("late", "reject", "said"),
    [(True, False, "acks_late is on without"), (False, True, "reject_on_worker_lost is on")],
)
def test_w004__acks_late_and_reject_on_worker_lost_must_go_together(settings, late, reject, said):
    settings.DJCELERY_OPS_TASK_ACKS_LATE = late
    settings.DJCELERY_OPS_TASK_REJECT_ON_WORKER_LOST = reject
    warnings = ops_checks.check_acks_late_with_reject_on_worker_lost()
    assert ids(warnings) == ["djcelery_ops.W004"]
    assert warnings[0].msg.startswith(said)
    assert "djcelery_ops.W004" in ops_ids()
    settings.DJCELERY_OPS_TASK_REJECT_ON_WORKER_LOST = late
    assert ops_checks.check_acks_late_with_reject_on_worker_lost() == []


def test_w004__reads_the_celery_setting_when_djcelery_ops_leaves_it(settings, celery_conf):
    del settings.DJCELERY_OPS_TASK_ACKS_LATE  # unset, whatever the settings module says
    celery_conf.task_acks_late = False  # the project's Celery setting, read by OpsTask too
    try:
        assert ids(ops_checks.check_acks_late_with_reject_on_worker_lost()) == ["djcelery_ops.W004"]
    finally:
        celery_conf.changes.pop("task_acks_late", None)


def test_w005__a_new_database_connection_per_task(settings, celery_conf):
    if connections["default"].vendor == "sqlite":
        assert ops_checks.check_database_connection_per_task() == []  # cheap on SQLite
        return
    celery_conf["db_reuse_max"] = None
    warnings = ops_checks.check_database_connection_per_task()
    assert ids(warnings) == ["djcelery_ops.W005"]
    assert "CELERY_DB_REUSE_MAX" in warnings[0].hint
    settings.SILENCED_SYSTEM_CHECKS = []  # the suite silences it (see tests/settings.py)
    assert "djcelery_ops.W005" in ops_ids()
    celery_conf["db_reuse_max"] = 100
    assert ops_checks.check_database_connection_per_task() == []


def test_w006__a_result_backend_without_expiry(celery_conf):
    celery_conf.result_backend = "django-db"
    celery_conf.result_expires = None
    warnings = ops_checks.check_result_backend_expires()
    assert ids(warnings) == ["djcelery_ops.W006"]
    assert "(django-db)" in warnings[0].msg and "CELERY_RESULT_EXPIRES" in warnings[0].hint
    assert "djcelery_ops.W006" in ops_ids()
    celery_conf.result_expires = 3600
    assert ops_checks.check_result_backend_expires() == []
    celery_conf.result_backend = None
    celery_conf.result_expires = None
    assert ops_checks.check_result_backend_expires() == []  # no results kept at all


def test_w007__use_tz_off(settings):
    settings.USE_TZ = False
    warnings = ops_checks.check_use_tz()
    assert ids(warnings) == ["djcelery_ops.W007"]
    assert "USE_TZ = True" in warnings[0].hint
    assert "djcelery_ops.W007" in ops_ids()
    settings.USE_TZ = True
    assert ops_checks.check_use_tz() == []
