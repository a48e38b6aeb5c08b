"""Settings of djcelery_ops.

Every name is read from ``django.conf.settings`` with the ``DJCELERY_OPS_`` prefix on its
first access and kept; Django's ``setting_changed`` signal (sent by ``override_settings`` and
pytest-django's ``settings`` fixture) empties the cache, so tests can change them. Nothing is
read at import time. The class attributes are the documented defaults.

The cache matters: the job-run receivers read a few settings for every task, and a miss on
``django.conf.settings`` (a setting the project leaves at its default) raises and catches an
AttributeError through LazySettings each time, about 5 microseconds a read.
"""

from __future__ import annotations

import weakref
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

PREFIX = "DJCELERY_OPS_"
# What ``OpsSettings.project_value`` returns for a setting the project leaves unset.
UNSET: Any = object()
# 13 to 19 digits, maybe grouped by spaces or dashes, not inside a longer run of digits.
CARD_NUMBER_PATTERN = r"(?<!\d)(?P<luhn>\d(?:[ -]?\d){12,18})(?!\d)"
_instances: weakref.WeakSet[OpsSettings] = weakref.WeakSet()


class OpsSettings:
    """Typed defaults; attribute access returns the project's value when it sets one."""

    # Task defaults of OpsTask; a task's own option (decorator or class attribute) wins.
    TASK_ACKS_LATE: bool = True
    TASK_REJECT_ON_WORKER_LOST: bool = True
    TASK_SOFT_TIME_LIMIT: float | None = 300
    TASK_TIME_LIMIT: float | None = 330
    TASK_MAX_RETRIES: int | None = 5
    TASK_RETRY_BACKOFF: int = 2
    TASK_RETRY_BACKOFF_MAX: int = 600
    TASK_RETRY_JITTER: bool = True

    # Dead letters.
    DEAD_LETTER_MAX_DELIVERIES: int = 5
    DEAD_LETTER_MAX_PAYLOAD_BYTES: int = 64 * 1024
    # Exception messages (dead letters and job runs) and tracebacks keep their head and
    # tail within these sizes; the middle is replaced by a marker saying how much was cut.
    DEAD_LETTER_MAX_MESSAGE_BYTES: int = 16 * 1024
    DEAD_LETTER_MAX_TRACEBACK_BYTES: int = 64 * 1024
    DEAD_LETTER_SPOOL_DIR: str | None = None
    # Seconds between two looks at the spool by each worker's main process: a record
    # spooled during an outage is stored at most about this long after the database is back.
    DEAD_LETTER_SPOOL_INGEST_INTERVAL: float = 30
    DEAD_LETTER_CAPTURE_ALL_TASKS: bool = True

    # Job runs.
    RUNS_ENABLED: bool = True
    RUNS_ALL_TASKS: bool = False
    RUNS_STORE_ARGS: bool = False
    RUNS_FLUSH_INTERVAL: float = 1.0
    RUNS_BATCH_SIZE: int = 2000
    RUNS_TENANT_HEADER: str = "tenant"
    # Daily partitions (``partition_task_runs``): how many days back a write looks for the
    # row its task id already has. Longer than any ETA/countdown wait plus run time.
    RUNS_PARTITION_LOOKBACK_DAYS: int = 7

    # Periodic jobs.
    # Schedules as code: a list of dicts (or ``Schedule`` objects), or the dotted path of a
    # module attribute holding one; ``sync_celery_schedules`` upserts them into django-celery-beat.
    SCHEDULES: list[Any] | str | None = None
    # Seconds of ``expires`` given to synced periodic tasks that declare none, so a late run
    # is dropped instead of piling up; interval schedules get at most their interval.
    SCHEDULE_DEFAULT_EXPIRES_SECONDS: int = 3600
    # Timezone of crontab schedules declared without one.
    SCHEDULE_DEFAULT_TIMEZONE: str = "UTC"
    # Seconds a beat leader's lease lasts; a standby takes over at most this long (plus one
    # beat loop) after the leader died. The leader renews at a third of it.
    BEAT_LEASE_SECONDS: float = 10.0
    # Name of the lease row: beat processes sharing a name elect one leader among them.
    BEAT_LEASE_NAME: str = "default"

    # Idempotency (djcelery_ops.idempotency).
    IDEMPOTENCY_DEFAULT_MODE: str = "atomic"
    IDEMPOTENCY_LEASE_MARGIN_SECONDS: float = 30
    IDEMPOTENCY_DEFAULT_LEASE_SECONDS: float = 3600
    IDEMPOTENCY_RESULT_MAX_BYTES: int = 64 * 1024
    IDEMPOTENCY_KEY_TTL_SECONDS: float | None = None
    # How long a task waits, in all, for a key another execution holds; then it is
    # dead-lettered with reason ``idempotency_key_busy``. Waits do not spend max_retries.
    IDEMPOTENCY_MAX_WAIT_SECONDS: float = 3600

    # Replay, discard and purge of dead letters.
    DEAD_LETTER_CELERY_APP: str | None = None
    DEAD_LETTER_REPLAY_BATCH_SIZE: int = 1000
    DEAD_LETTER_PURGE_BATCH_SIZE: int = 1000
    DEAD_LETTER_CANARY_TIMEOUT: float = 300
    # Seconds after which a replay committed but not confirmed published counts as
    # interrupted: ``replay_dead_letters`` publishes it again, with the same task id.
    DEAD_LETTER_REPLAY_RECOVER_AFTER: float = 60
    # The admin hands a whole-group replay or discard of more rows than this to a worker
    # (a ``BulkAction``, its progress on its admin page); None: always in the request.
    DEAD_LETTER_BACKGROUND_ABOVE: int | None = 1000
    # How long one execution of a bulk action works before a continuation takes over
    # (well inside the task time limits and the broker's visibility timeout).
    DEAD_LETTER_BULK_SLICE_SECONDS: float = 60

    # Secrets: what the admin pages and the log records of djcelery_ops never show (the
    # stored dead letters keep the real values). Names match keys case-insensitively as
    # substrings; patterns match values (a group named ``luhn`` must pass the Luhn check).
    REDACT_KEYS: list[str] = [
        "password", "passwd", "pwd", "secret", "token", "authorization", "api_key", "apikey",
        "access_key", "private_key", "cookie", "session", "card_number", "cardnumber",
        "credit_card", "cvv", "cvc", "iban",
    ]  # fmt: skip
    REDACT_PATTERNS: list[str] = [CARD_NUMBER_PATTERN]

    # Encryption at rest of dead-letter payloads (the ``[crypto]`` extra): Fernet keys, the
    # first encrypts, all decrypt. Empty: payloads are stored in clear.
    ENCRYPTION_KEYS: list[str] = []

    # Metrics: a bearer token that opens the metrics view to a scraper (None: only users
    # with the djcelery_ops.view_metrics permission).
    METRICS_TOKEN: str | None = None
    # Queue depths (metrics and status): the queues to measure (None: the Celery app's
    # configured queues, ``task_queues`` or the default queue), and how long one
    # measurement is reused, so a scrape is not a broker round-trip per queue.
    QUEUE_DEPTH_QUEUES: list[str] | None = None
    QUEUE_DEPTH_CACHE_SECONDS: float = 15.0

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self._project_values: dict[str, Any] = {}
        _instances.add(self)

    def __getattribute__(self, name: str) -> Any:
        if not name.isupper():
            return object.__getattribute__(self, name)
        cache = object.__getattribute__(self, "_cache")
        try:
            return cache[name]
        except KeyError:
            pass
        value = getattr(django_settings, PREFIX + name, object.__getattribute__(self, name))
        cache[name] = value
        return value

    def project_value(self, name: str) -> Any:
        """``DJCELERY_OPS_<name>`` as the project sets it, or ``UNSET``: the task options
        need to know whether the project chose a value before falling back to Celery's."""
        values = object.__getattribute__(self, "_project_values")
        try:
            return values[name]
        except KeyError:
            pass
        value = getattr(django_settings, PREFIX + name, UNSET)
        values[name] = value
        return value

    def reload(self) -> None:
        """Forget the values read so far; the next access reads Django settings again."""
        object.__getattribute__(self, "_cache").clear()
        object.__getattribute__(self, "_project_values").clear()

    def names(self) -> list[str]:
        return sorted(name for name in type(self).__annotations__ if name.isupper())


ops_settings = OpsSettings()


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX):
        for instance in list(_instances):
            instance.reload()


setting_changed.connect(_setting_changed, dispatch_uid="djcelery_ops.conf.setting_changed")
