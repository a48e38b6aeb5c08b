"""System checks of the project's Celery and Django configuration that djcelery_ops relies
on (ids E008, W004 to W007); imported, and so registered, by ``djcelery_ops.checks``.

They read the current Celery app's configuration (``app.conf``), which Celery fills from
the Django settings (``CELERY_*``), and never connect to anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db import connections

from djcelery_ops.conf import PREFIX, OpsSettings

Messages = list[checks.CheckMessage]
PICKLE = frozenset({"pickle", "application/x-python-serialize"})
# Result backends that expire results themselves (a key TTL); the others need beat's
# ``celery.backend_cleanup`` task, scheduled only while ``result_expires`` is set.
SELF_EXPIRING_BACKENDS = ("redis", "rediss", "sentinel", "valkey", "memcache", "cache")


def _conf() -> Any:
    from celery import current_app

    return current_app.conf


@checks.register(checks.Tags.security)
def check_pickle_not_accepted(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """A worker that accepts pickle runs any code someone who can publish to the broker
    sends it; a dead letter's replay would decode pickle in the web process too."""
    accepted = {str(content) for content in _conf().accept_content or ()}
    if not accepted & PICKLE:
        return []
    return [
        checks.Error(
            "The Celery app accepts pickle (accept_content): anyone who can publish to the "
            "broker can run code in the workers.",
            hint='Set CELERY_ACCEPT_CONTENT = ["json"] and send JSON-serialisable arguments.',
            id="djcelery_ops.E008",
        )
    ]


def _effective(name: str, celery_key: str) -> Any:
    """The value OpsTask uses: DJCELERY_OPS_<name>, else Celery's setting, else the default."""
    if hasattr(settings, PREFIX + name):
        return getattr(settings, PREFIX + name)
    conf = _conf()
    if conf.value_set_for(celery_key):
        return conf[celery_key]
    return getattr(OpsSettings, name)


@checks.register(checks.Tags.compatibility)
def check_acks_late_with_reject_on_worker_lost(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """acks_late alone acks the message of a task whose worker was killed (it is lost for
    the broker); reject_on_worker_lost alone does nothing (it needs acks_late)."""
    late = bool(_effective("TASK_ACKS_LATE", "task_acks_late"))
    reject = bool(_effective("TASK_REJECT_ON_WORKER_LOST", "task_reject_on_worker_lost"))
    if late == reject:
        return []
    if late:
        message = (
            "acks_late is on without reject_on_worker_lost: when a worker child is killed "
            "(OOM, SIGKILL) its message is acknowledged and not delivered again."
        )
    else:
        message = (
            "reject_on_worker_lost is on without acks_late: it has no effect, messages are "
            "acknowledged before the task runs."
        )
    return [
        checks.Warning(
            message,
            hint=f"Set {PREFIX}TASK_ACKS_LATE and {PREFIX}TASK_REJECT_ON_WORKER_LOST (or "
            "CELERY_TASK_ACKS_LATE and CELERY_TASK_REJECT_ON_WORKER_LOST) to the same value; "
            "djcelery_ops caps redeliveries with DEAD_LETTER_MAX_DELIVERIES.",
            id="djcelery_ops.W004",
        )
    ]


@checks.register(checks.Tags.database)
def check_database_connection_per_task(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Celery's Django fixup closes every database connection after each task (``close()``,
    whatever CONN_MAX_AGE says) unless CELERY_DB_REUSE_MAX is set: a new connection per
    task. Not said of SQLite, where opening a connection costs next to nothing."""
    vendors = {connections[alias].vendor for alias in connections}
    if _conf().get("db_reuse_max") or vendors <= {"sqlite"}:
        return []
    return [
        checks.Warning(
            "CELERY_DB_REUSE_MAX is not set: Celery's Django fixup closes the database "
            "connection after every task, so each task opens a new one (CONN_MAX_AGE does "
            "not prevent it).",
            hint="Set CELERY_DB_REUSE_MAX (e.g. 100 tasks per connection), or put a "
            "connection pooler (PgBouncer) in front of PostgreSQL and silence this check.",
            id="djcelery_ops.W005",
        )
    ]


def _backend_scheme(backend: Any) -> str:
    if not isinstance(backend, str):
        return ""  # a backend class: its own business
    return backend.split("://", 1)[0].split("+", 1)[0].lower()


@checks.register(checks.Tags.compatibility)
def check_result_backend_expires(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Without result_expires the result table (or keys) grows with every task, forever."""
    conf = _conf()
    backend = conf.result_backend
    if not backend or backend == "disabled" or conf.result_expires:
        return []
    return [
        checks.Warning(
            f"The result backend ({_backend_scheme(backend) or 'custom'}) keeps results "
            "without expiry (result_expires is not set): it grows with every task.",
            hint="Set CELERY_RESULT_EXPIRES (seconds or a timedelta; Celery's default is one "
            "day); database backends are cleaned by beat's celery.backend_cleanup task, "
            "which beat schedules only when it is set. Or set CELERY_TASK_IGNORE_RESULT.",
            id="djcelery_ops.W006",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_use_tz(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """Leases, slots, ETAs and run times compare aware datetimes from the database clock;
    naive local times are ambiguous at a daylight-saving change."""
    if getattr(settings, "USE_TZ", True):
        return []
    return [
        checks.Warning(
            "USE_TZ is False: beat slots, leases and job-run times are naive local times, "
            "wrong or doubled across a daylight-saving change.",
            hint="Set USE_TZ = True (Django's default since 5.0).",
            id="djcelery_ops.W007",
        )
    ]
