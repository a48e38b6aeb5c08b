"""System checks of the schedules part (ids ``djcelery_ops.W101``, ``djcelery_ops.E101``...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from kombu.utils.imports import symbol_by_name

from djcelery_ops.conf import ops_settings
from djcelery_ops.schedules.declarations import DeclarationError, load_schedules

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
def check_beat_scheduler(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Schedules as code are meant for the locked scheduler; without it two beats run twice."""
    if not ops_settings.SCHEDULES:
        return []
    if _is_locked_scheduler(getattr(settings, "CELERY_BEAT_SCHEDULER", None)):
        return []
    return [
        checks.Warning(
            "DJCELERY_OPS_SCHEDULES is set but CELERY_BEAT_SCHEDULER is not the locked "
            "scheduler: several beat processes would each dispatch every schedule.",
            hint=f'Set CELERY_BEAT_SCHEDULER = "{LOCKED_SCHEDULER}" (or pass it to beat -S '
            "and silence this check).",
            id="djcelery_ops.W101",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_lease_seconds(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A lease shorter than a few seconds expires during an ordinary database hiccup."""
    if float(ops_settings.BEAT_LEASE_SECONDS) >= MIN_LEASE_SECONDS:
        return []
    return [
        checks.Warning(
            f"DJCELERY_OPS_BEAT_LEASE_SECONDS is {ops_settings.BEAT_LEASE_SECONDS}: the beat "
            "leader would lose its lease on any short pause and leadership would flap.",
            hint=f"Use at least {MIN_LEASE_SECONDS:g} seconds (default 10).",
            id="djcelery_ops.W102",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_schedule_declarations(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Declarations are validated here too (task names only by ``sync_celery_schedules``)."""
    try:
        load_schedules()
    except DeclarationError as exc:
        return [
            checks.Error(
                error,
                hint="Fix DJCELERY_OPS_SCHEDULES; sync_celery_schedules writes nothing until then.",
                id="djcelery_ops.E101",
            )
            for error in exc.errors
        ]
    return []
