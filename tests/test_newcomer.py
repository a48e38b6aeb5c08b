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
from celery import Celery
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

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
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README has no python block after <!-- {marker} -->"
    return match.group(1)


# --- Item 4: the project's Celery app must be loaded -------------------------------------


def test_e007__celery_fallback_app_is_an_error():
    with current_celery_app(None):
        errors = ops_checks.check_project_celery_app()
    assert [e.id for e in errors] == ["djcelery_ops.E007"]
    assert "Celery's fallback app" in errors[0].msg
    assert "from .celery import app as celery_app" in errors[0].hint


def test_e007__a_project_app_without_broker_url_is_an_error():
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
    assert "Celery's fallback app" in str(raised.value)
    assert raised.value.returncode == 3
    # Claimed, not published: the outbox keeps it for the next (configured) run.
    assert letter.replays.get().published_at is None


@pytest.mark.django_db
def test_run_now__refuses_to_send_with_celery_fallback_app():
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)
    task = PeriodicTask.objects.create(name="daily", task="x", interval=interval)
    with current_celery_app(None), pytest.raises(ImproperlyConfigured, match="fallback app"):
        run_now(task, requested_by="admin")
