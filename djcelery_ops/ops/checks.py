"""System checks: misconfigurations reported by Django's check framework with stable ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from djcelery_ops.conf import ops_settings

REQUIRED_APPS = ("django_celery_beat", "django_celery_results")
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600


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


@checks.register()
def check_spool_dir(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Dead letters written during a database outage must survive a reboot."""
    if ops_settings.DEAD_LETTER_SPOOL_DIR:
        return []
    return [
        checks.Warning(
            "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR is not set: dead letters recorded while the "
            "database is unreachable go to the temporary directory.",
            hint="Set it to a persistent directory on each worker host.",
            id="djcelery_ops.W001",
        )
    ]


@checks.register()
def check_time_limit_below_visibility_timeout(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """On Redis, a task running past the visibility timeout is delivered again, in parallel."""
    from celery import current_app

    conf = current_app.conf
    broker = str(conf.broker_url or "")
    limit = ops_settings.TASK_TIME_LIMIT
    if not broker.startswith(("redis", "rediss", "sentinel")) or limit is None:
        return []
    options = conf.broker_transport_options or {}
    timeout = options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY_TIMEOUT)
    if limit < timeout:
        return []
    return [
        checks.Warning(
            f"DJCELERY_OPS_TASK_TIME_LIMIT ({limit}s) is not below the Redis visibility "
            f"timeout ({timeout}s): a task still running when it expires runs twice at once.",
            hint="Lower the time limit or raise broker_transport_options['visibility_timeout'].",
            id="djcelery_ops.W002",
        )
    ]
