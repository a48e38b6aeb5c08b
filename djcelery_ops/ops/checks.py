"""System checks: misconfigurations reported by Django's check framework with stable ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

REQUIRED_APPS = ("django_celery_beat", "django_celery_results")


@checks.register(checks.Tags.compatibility)
def check_required_apps(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """djcelery_ops' schedules and result views read the tables of these two apps."""
    missing = [app for app in REQUIRED_APPS if app not in settings.INSTALLED_APPS]
    return [
        checks.Error(
            f"{app!r} is not in INSTALLED_APPS.",
            hint=f"Add {app!r} to INSTALLED_APPS; djcelery_ops reads its tables.",
            id="djcelery_ops.E001",
        )
        for app in missing
    ]
