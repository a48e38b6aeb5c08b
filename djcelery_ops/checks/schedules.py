"""System checks of periodic jobs declared in code (ids W101, W102, E101); imported, and
so registered, by ``djcelery_ops.checks``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from kombu.utils.imports import symbol_by_name

from djcelery_ops.checks import Messages, has_setting_type
from djcelery_ops.conf import PREFIX, ops_settings

LOCKED_SCHEDULER = "djcelery_ops.schedules.scheduler:LockedDatabaseScheduler"
MIN_LEASE_SECONDS = 3.0


def _is_locked_scheduler(name: object) -> bool:
    from djcelery_ops.schedules.scheduler import LockedDatabaseScheduler

    if not isinstance(name, str):
        return isinstance(name, type) and issubclass(name, LockedDatabaseScheduler)
    try:
        cls = symbol_by_name(name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, LockedDatabaseScheduler)


@checks.register(checks.Tags.compatibility)
def check_beat_scheduler(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """Schedules as code are meant for the locked scheduler; without it two beats run twice."""
    if not ops_settings.SCHEDULES:
        return []
    if _is_locked_scheduler(getattr(settings, "CELERY_BEAT_SCHEDULER", None)):
        return []
    return [
        checks.Warning(
            f"{PREFIX}SCHEDULES is set but CELERY_BEAT_SCHEDULER is not the locked "
            "scheduler: several beat processes would each dispatch every schedule.",
            hint=f'Set CELERY_BEAT_SCHEDULER = "{LOCKED_SCHEDULER}" (or pass it to beat -S '
            "and silence this check).",
            id="djcelery_ops.W101",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_lease_seconds(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """A lease shorter than a few seconds expires during an ordinary database hiccup."""
    seconds = ops_settings.BEAT_LEASE_SECONDS
    if not has_setting_type("BEAT_LEASE_SECONDS", seconds) or seconds >= MIN_LEASE_SECONDS:
        return []  # a wrong type is E002
    return [
        checks.Warning(
            f"{PREFIX}BEAT_LEASE_SECONDS is {seconds}: the beat leader would lose its lease "
            "on any short pause and leadership would flap.",
            hint=f"Use at least {MIN_LEASE_SECONDS:g} seconds (default 10).",
            id="djcelery_ops.W102",
        )
    ]


_discovering_tasks = False


def _known_task_names() -> set[str] | None:
    """The project's task names; ``None`` when they cannot be known here: without the
    project's Celery app (E007), or when Celery's Django fixup runs the checks from inside
    the task discovery this starts (it does, before importing task modules)."""
    global _discovering_tasks
    from celery import current_app

    from djcelery_ops.deadletter.outbox import celery_app_problem
    from djcelery_ops.schedules.sync import known_task_names

    if _discovering_tasks or celery_app_problem(current_app) is not None:
        return None
    _discovering_tasks = True
    try:
        return known_task_names()
    finally:
        _discovering_tasks = False


@checks.register(checks.Tags.compatibility)
def check_schedule_declarations(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Every problem of every declaration, task names included once the project's Celery
    app is loaded (without it, E007, only Celery's own tasks would be known)."""
    from djcelery_ops.schedules.declarations import load_and_check_schedules

    if not has_setting_type("SCHEDULES", ops_settings.SCHEDULES):
        return []  # E002
    _valid, errors = load_and_check_schedules(known_tasks=_known_task_names())
    return [
        checks.Error(
            error,
            hint=f"Fix {PREFIX}SCHEDULES; sync_celery_schedules writes nothing until then.",
            id="djcelery_ops.E101",
        )
        for error in errors
    ]
