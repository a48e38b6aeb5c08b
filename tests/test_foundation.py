"""The skeleton works: migrations, checks, settings, and a real worker end to end."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import override_settings

from djcelery_ops.conf import OpsSettings
from djcelery_ops.ops.checks import check_required_apps
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


def test_settings__read_on_every_access_with_prefix_and_default():
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
