"""System checks of djcelery_ops: every misconfiguration it can see, with a stable id.

| id    | what                                                                  |
| E001  | a required app is not installed                                       |
| E002  | a ``DJCELERY_OPS_*`` setting has the wrong type                       |
| E003  | a ``DJCELERY_OPS_*`` setting has a value out of its range             |
| E004  | ``DJCELERY_OPS_IDEMPOTENCY_DEFAULT_MODE`` is not a mode               |
| E005  | ``DJCELERY_OPS_DEAD_LETTER_CELERY_APP`` does not name a Celery app    |
| E006  | djcelery_ops' tables are on a database other than PostgreSQL / SQLite |
| E007  | the current Celery app is Celery's fallback app or has no broker URL  |
| E008  | the Celery app accepts pickle (``celery_config``)                     |
| E101  | a schedule declaration is invalid                                     |
| W001  | no spool directory (``--deploy`` only)                                |
| W002  | on Redis, the hard time limit is not below the visibility timeout     |
| W003  | the soft time limit is not below the hard one (it is lowered)         |
| W004  | acks_late without reject_on_worker_lost, or the reverse (``celery_config``) |
| W005  | a new database connection for every task (``celery_config``)          |
| W006  | a result backend that keeps results without expiry (``celery_config``) |
| W007  | USE_TZ is off (``celery_config``)                                     |
| W101  | schedules as code without the locked scheduler                        |
| W102  | a beat lease too short to survive a pause                             |

This module holds the checks of djcelery_ops' own settings, each a short function, and
is the one table of ids (unique across the app). The checks of the Celery and Django
configuration the app relies on are in ``djcelery_ops.checks.celery_config``, those of
periodic jobs in ``djcelery_ops.checks.schedules``; both are imported at the end to
register them.
"""

from __future__ import annotations

import re
import types
import typing
import zoneinfo
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.db import connections, router
from django.utils.module_loading import import_string

from djcelery_ops.conf import PREFIX, OpsSettings, ops_settings

# The schedules admin, scheduler and models import django_celery_beat's models, so it is
# needed even without schedules; nothing in djcelery_ops reads django_celery_results.
REQUIRED_APPS = ("django_celery_beat",)
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600
IDEMPOTENCY_MODES = ("atomic", "lease")
SUPPORTED_VENDORS = ("postgresql", "sqlite")

# Batch sizes, intervals, leases, limits: zero or less would stall or refuse all work.
POSITIVE = frozenset(
    {
        "TASK_SOFT_TIME_LIMIT",
        "TASK_TIME_LIMIT",
        "TASK_RETRY_BACKOFF_MAX",
        "DEAD_LETTER_MAX_DELIVERIES",
        "DEAD_LETTER_MAX_PAYLOAD_BYTES",
        "DEAD_LETTER_SPOOL_INGEST_INTERVAL",
        "RUNS_FLUSH_INTERVAL",
        "RUNS_BATCH_SIZE",
        "SCHEDULE_DEFAULT_EXPIRES_SECONDS",
        "BEAT_LEASE_SECONDS",
        "IDEMPOTENCY_DEFAULT_LEASE_SECONDS",
        "IDEMPOTENCY_RESULT_MAX_BYTES",
        "IDEMPOTENCY_KEY_TTL_SECONDS",
        "DEAD_LETTER_REPLAY_BATCH_SIZE",
        "DEAD_LETTER_PURGE_BATCH_SIZE",
        "DEAD_LETTER_CANARY_TIMEOUT",
        "DEAD_LETTER_MAX_MESSAGE_BYTES",
        "DEAD_LETTER_MAX_TRACEBACK_BYTES",
        "IDEMPOTENCY_MAX_WAIT_SECONDS",
        "QUEUE_DEPTH_CACHE_SECONDS",
    }
)
# Zero means "none": no retry, no backoff, no margin, no wait before recovering a replay.
NON_NEGATIVE = frozenset(
    {
        "TASK_MAX_RETRIES",
        "TASK_RETRY_BACKOFF",
        "IDEMPOTENCY_LEASE_MARGIN_SECONDS",
        "DEAD_LETTER_REPLAY_RECOVER_AFTER",
        "DEAD_LETTER_BACKGROUND_ABOVE",  # 0: every whole group goes to a worker
        "DEAD_LETTER_BULK_SLICE_SECONDS",  # 0: one batch per slice
        "RUNS_PARTITION_LOOKBACK_DAYS",
    }
)
NON_EMPTY = frozenset(
    {"RUNS_TENANT_HEADER", "BEAT_LEASE_NAME", "SCHEDULE_DEFAULT_TIMEZONE", "METRICS_TOKEN"}
)
# A pattern that does not compile would fail every log record and admin page.
REGEX_LISTS = frozenset({"REDACT_PATTERNS"})

Messages = list[checks.CheckMessage]


# --- E001: installation -----------------------------------------------------------------------


@checks.register(checks.Tags.compatibility)
def check_required_apps(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """The schedules part reads and admins django-celery-beat's tables."""
    return [
        checks.Error(
            f"{app!r} is not in INSTALLED_APPS.",
            hint=f"Add {app!r} to INSTALLED_APPS; djcelery_ops reads its tables.",
            id="djcelery_ops.E001",
        )
        for app in REQUIRED_APPS
        if app not in settings.INSTALLED_APPS
    ]


# --- E002, E003: type and range of every setting ----------------------------------------------


def _accepted_types(hint: Any) -> tuple[type, ...]:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    accepted: list[type] = []
    for arg in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(arg) or arg
        accepted.append(origin)
        if origin is float:
            accepted.append(int)  # 30 is a fine number of seconds
        if origin is list:
            accepted.append(tuple)  # declarations are read as any sequence
    return tuple(accepted)


def has_setting_type(name: str, value: Any) -> bool:
    """True when ``value`` fits the annotation of ``OpsSettings.<name>``."""
    accepted = _accepted_types(typing.get_type_hints(OpsSettings)[name])
    if isinstance(value, bool) and bool not in accepted:
        return False  # True is an int to Python, never a batch size to a project
    return isinstance(value, accepted)


def _range_problem(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in POSITIVE and value <= 0:
        return "must be greater than 0"
    if name in NON_NEGATIVE and value < 0:
        return "must not be negative"
    if name in NON_EMPTY and not value.strip():
        return "must not be empty"
    if name == "SCHEDULE_DEFAULT_TIMEZONE" and value not in zoneinfo.available_timezones():
        return "is not a timezone name of the IANA database"
    if name in REGEX_LISTS:
        return _regex_problem(value)
    return None


def _regex_problem(patterns: Sequence[Any]) -> str | None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            return f"holds {pattern!r}, not a regular expression ({error})"
    return None


def _default_hint(name: str) -> str:
    annotation = OpsSettings.__annotations__[name]
    return f"Set {PREFIX}{name} to a {annotation} (default {getattr(OpsSettings, name)!r})."


@checks.register(checks.Tags.compatibility)
def check_setting_types(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """A wrong type fails far from its cause (in a worker, mid-task): report it here."""
    return [
        checks.Error(
            f"{PREFIX}{name} is {value!r} ({type(value).__name__}), not a "
            f"{OpsSettings.__annotations__[name]}.",
            hint=_default_hint(name),
            id="djcelery_ops.E002",
        )
        for name in ops_settings.names()
        if not has_setting_type(name, value := getattr(ops_settings, name))
    ]


@checks.register(checks.Tags.compatibility)
def check_setting_ranges(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """Values of the right type that cannot work (settings of a wrong type are E002)."""
    messages: Messages = []
    for name in ops_settings.names():
        value = getattr(ops_settings, name)
        if not has_setting_type(name, value):
            continue
        problem = _range_problem(name, value)
        if problem:
            messages.append(
                checks.Error(
                    f"{PREFIX}{name} is {value!r}: it {problem}.",
                    hint=_default_hint(name),
                    id="djcelery_ops.E003",
                )
            )
    return messages


# --- E004, E005, E006: values that name something ---------------------------------------------


@checks.register(checks.Tags.compatibility)
def check_idempotency_mode(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """An unknown mode would fail every task with a key, at run time."""
    mode = ops_settings.IDEMPOTENCY_DEFAULT_MODE
    if mode in IDEMPOTENCY_MODES:
        return []
    return [
        checks.Error(
            f"{PREFIX}IDEMPOTENCY_DEFAULT_MODE is {mode!r}, not a mode of djcelery_ops.",
            hint='Use "atomic" (database-only effects) or "lease" (external effects).',
            id="djcelery_ops.E004",
        )
    ]


def _celery_app_problem(path: str) -> str | None:
    from celery import Celery

    try:
        app = import_string(path)
    except ImportError as exc:
        return f"cannot be imported: {exc}"
    if not isinstance(app, Celery):
        return f"is a {type(app).__name__}, not a Celery app"
    return None


@checks.register(checks.Tags.compatibility)
def check_dead_letter_celery_app(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Replays publish with this app; a wrong path fails only when an operator replays."""
    path = ops_settings.DEAD_LETTER_CELERY_APP
    if not isinstance(path, str):
        return []  # None (current app), or a wrong type reported by E002
    problem = _celery_app_problem(path)
    if problem is None:
        return []
    return [
        checks.Error(
            f"{PREFIX}DEAD_LETTER_CELERY_APP {path!r} {problem}.",
            hint='Give the dotted path of your Celery app, e.g. "proj.celery.app", or None.',
            id="djcelery_ops.E005",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_database_vendor(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Idempotency claims and job-run batches use SQL written for PostgreSQL and SQLite.

    The vendor is a property of the backend class: no connection is opened."""
    aliases = {
        router.db_for_write(model) or "default"
        for model in apps.get_app_config("djcelery_ops").get_models()
    }
    return [
        checks.Error(
            f"Database {alias!r} holds djcelery_ops' tables but is "
            f"{connections[alias].vendor}; djcelery_ops supports PostgreSQL and SQLite.",
            hint="Route djcelery_ops' models to a PostgreSQL (or SQLite) database.",
            id="djcelery_ops.E006",
        )
        for alias in sorted(aliases)
        if connections[alias].vendor not in SUPPORTED_VENDORS
    ]


@checks.register(checks.Tags.compatibility)
def check_project_celery_app(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Without the project's app loaded, replay and "run now" would publish with Celery's
    fallback app to its default broker (amqp on localhost) and report success."""
    from celery import current_app

    from djcelery_ops.deadletter.outbox import celery_app_problem

    problem = celery_app_problem(current_app)
    if problem is None:
        return []
    fallback = "fallback app" in problem
    return [
        checks.Error(
            f"{problem[0].upper()}{problem[1:]}.",
            hint=(
                "Load it with Django: in the project's __init__.py, "
                "`from .celery import app as celery_app`."
                if fallback
                else "Set CELERY_BROKER_URL (read by app.config_from_object("
                '"django.conf:settings", namespace="CELERY")).'
            ),
            id="djcelery_ops.E007",
        )
    ]


# --- W001 to W003: operations -----------------------------------------------------------------


@checks.register(deploy=True)
def check_spool_dir(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """Dead letters written during a database outage must survive a reboot (production)."""
    if ops_settings.DEAD_LETTER_SPOOL_DIR:
        return []
    return [
        checks.Warning(
            f"{PREFIX}DEAD_LETTER_SPOOL_DIR is not set: dead letters recorded while the "
            "database is unreachable go to the temporary directory.",
            hint="Set it to a persistent directory on each worker host.",
            id="djcelery_ops.W001",
        )
    ]


@checks.register()
def check_time_limit_below_visibility_timeout(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """On Redis, a task running past the visibility timeout is delivered again, in parallel."""
    from celery import current_app

    conf = current_app.conf
    broker = str(conf.broker_url or "")
    limit = ops_settings.TASK_TIME_LIMIT
    redis = broker.startswith(("redis", "rediss", "sentinel"))
    if not redis or limit is None or not has_setting_type("TASK_TIME_LIMIT", limit):
        return []
    options = conf.broker_transport_options or {}
    timeout = options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY_TIMEOUT)
    if limit < timeout:
        return []
    return [
        checks.Warning(
            f"{PREFIX}TASK_TIME_LIMIT ({limit}s) is not below the Redis visibility "
            f"timeout ({timeout}s): a task still running when it expires runs twice at once.",
            hint="Lower the time limit or raise broker_transport_options['visibility_timeout'].",
            id="djcelery_ops.W002",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_soft_below_hard_time_limit(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> Messages:
    """Celery refuses a soft limit above the hard one; OpsTask lowers it, which surprises."""
    soft, hard = ops_settings.TASK_SOFT_TIME_LIMIT, ops_settings.TASK_TIME_LIMIT
    typed = has_setting_type("TASK_SOFT_TIME_LIMIT", soft) and has_setting_type(
        "TASK_TIME_LIMIT", hard
    )
    if not typed or soft is None or hard is None or soft < hard:
        return []  # a wrong type is E002
    return [
        checks.Warning(
            f"{PREFIX}TASK_SOFT_TIME_LIMIT ({soft}s) is not below {PREFIX}TASK_TIME_LIMIT "
            f"({hard}s): OpsTask tasks get a soft limit of {max(hard * 0.9, hard - 30):g}s.",
            hint="Set the soft limit below the hard one, leaving the task time to clean up.",
            id="djcelery_ops.W003",
        )
    ]


# E008, W004 to W007: imported to register them, and re-exported like the checks above.
from djcelery_ops.checks.celery_config import (  # noqa: E402
    check_acks_late_with_reject_on_worker_lost as check_acks_late_with_reject_on_worker_lost,
)
from djcelery_ops.checks.celery_config import (  # noqa: E402
    check_database_connection_per_task as check_database_connection_per_task,
)
from djcelery_ops.checks.celery_config import (  # noqa: E402
    check_pickle_not_accepted as check_pickle_not_accepted,
)
from djcelery_ops.checks.celery_config import (  # noqa: E402
    check_result_backend_expires as check_result_backend_expires,
)
from djcelery_ops.checks.celery_config import check_use_tz as check_use_tz  # noqa: E402

# W101, W102, E101: imported to register them, and re-exported.
from djcelery_ops.checks.schedules import (  # noqa: E402
    check_beat_scheduler as check_beat_scheduler,
)
from djcelery_ops.checks.schedules import (  # noqa: E402
    check_lease_seconds as check_lease_seconds,
)
from djcelery_ops.checks.schedules import (  # noqa: E402
    check_schedule_declarations as check_schedule_declarations,
)
