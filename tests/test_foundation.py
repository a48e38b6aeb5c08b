"""The skeleton works: migrations, checks, settings, and a real worker end to end."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import call_command
from django.test import override_settings

from djcelery_ops.checks import check_required_apps
from djcelery_ops.conf import OpsSettings
from djcelery_ops.db import delete_in_batches
from djcelery_ops.management.base import parse_duration
from djcelery_ops.models import DeadLetter
from tests.factories import dead_letter
from tests.testapp.models import Effect
from tests.testapp.tasks import record_effect
from tests.utils import wait_until


@pytest.mark.django_db
def test_migrations__no_drift_between_models_and_committed_migrations():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    assert "No changes detected" in out.getvalue()


def test_checks__missing_required_app_is_an_error_with_a_hint(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_celery_beat"]
    errors = check_required_apps()
    assert [e.id for e in errors] == ["djcelery_ops.E001"]
    assert "django_celery_beat" in errors[0].hint


def test_checks__complete_installation_has_no_error():
    assert check_required_apps() == []


class _Example(OpsSettings):
    SOME_LIMIT: int = 7


def test_settings__prefix_default_and_override_settings():
    conf = _Example()
    assert conf.SOME_LIMIT == 7
    with override_settings(DJCELERY_OPS_SOME_LIMIT=11):
        assert conf.SOME_LIMIT == 11
    assert conf.SOME_LIMIT == 7
    assert conf.names() == ["SOME_LIMIT"]


@pytest.mark.worker
def test_worker__real_prefork_worker_runs_a_task_end_to_end(worker):
    result = record_effect.delay("hello")
    effect = wait_until(lambda: Effect.objects.filter(key="hello").first(), what="the effect")
    assert effect.task_id == result.id
    assert effect.worker_pid in worker.child_pids()


def test_checks__spool_dir_unset_is_a_warning(settings):
    from djcelery_ops.checks import check_spool_dir

    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = None
    assert [w.id for w in check_spool_dir()] == ["djcelery_ops.W001"]
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = "/var/spool/djops"
    assert check_spool_dir() == []


def test_checks__time_limit_at_or_over_redis_visibility_timeout_is_a_warning(settings, monkeypatch):
    from djcelery_ops.checks import check_time_limit_below_visibility_timeout as check
    from tests.celery_app import app

    # Celery reads CELERY_BROKER_URL from the environment before its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    saved = app.conf.broker_transport_options
    try:
        app.conf.broker_transport_options = {"visibility_timeout": 60}
        settings.DJCELERY_OPS_TASK_TIME_LIMIT = 60
        assert [w.id for w in check()] == ["djcelery_ops.W002"]
        settings.DJCELERY_OPS_TASK_TIME_LIMIT = 59
        assert check() == []
        monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest@127.0.0.1//")
        settings.DJCELERY_OPS_TASK_TIME_LIMIT = 7200
        assert check() == []
    finally:
        app.conf.broker_transport_options = saved


def test_ingest_command__dry_run_counts_then_ingests(settings, tmp_path, db):
    import json

    from djcelery_ops.deadletter.spool import write_to_spool
    from djcelery_ops.models import DeadLetter
    from tests.factories import failure_record

    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(tmp_path)
    write_to_spool(failure_record(task_id="spooled-1"))
    out = io.StringIO()
    call_command("ingest_dead_letter_spool", "--dry-run", stdout=out)
    assert out.getvalue() == f"Would ingest 1 spooled dead letters from {tmp_path}.\n"
    assert not DeadLetter.objects.exists()
    (tmp_path / "0-bad.json").write_text(json.dumps({"no": "fields"}))
    out, err = io.StringIO(), io.StringIO()
    call_command("ingest_dead_letter_spool", stdout=out, stderr=err)
    quarantine = tmp_path / "quarantine"
    assert out.getvalue() == (
        f"Ingested 1 spooled dead letters, quarantined 1 in {quarantine}, 0 left in {tmp_path}.\n"
    )
    assert err.getvalue().startswith("Quarantined 0-bad.json: unreadable: TypeError(")
    assert DeadLetter.objects.get().task_id == "spooled-1"


def test_retention__durations_and_batched_deletes(db):
    assert parse_duration("90s") == datetime.timedelta(seconds=90)
    assert parse_duration(" 2w ") == datetime.timedelta(weeks=2)
    for bad in ["", "0d", "-1d", "3.5h", "14y", "1234567d", "1d; DROP TABLE x"]:
        with pytest.raises(ValueError, match="is not a positive duration"):
            parse_duration(bad, "--since")
    for n in range(5):
        dead_letter(task_id=f"r-{n}")
    rows = DeadLetter.objects.filter(task_id__in=["r-0", "r-1", "r-2", "r-3"])
    assert list(delete_in_batches(rows, 3)) == [3, 4]
    assert list(DeadLetter.objects.values_list("task_id", flat=True)) == ["r-4"]
