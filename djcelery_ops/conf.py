"""Settings of djcelery_ops.

Every name is read from ``django.conf.settings`` with the ``DJCELERY_OPS_`` prefix on each
access, so ``override_settings`` and pytest-django's ``settings`` fixture work, and nothing is
read at import time. The class attributes are the documented defaults.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

PREFIX = "DJCELERY_OPS_"


class OpsSettings:
    """Typed defaults; attribute access returns the project's value when it sets one."""

    # Schedules as code: a list of dicts (or ``Schedule`` objects), or the dotted path of a
    # module attribute holding one; ``sync_schedules`` upserts them into django-celery-beat.
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

    def __getattribute__(self, name: str) -> Any:
        default = object.__getattribute__(self, name)
        if not name.isupper():
            return default
        return getattr(django_settings, PREFIX + name, default)

    def names(self) -> list[str]:
        return sorted(name for name in type(self).__annotations__ if name.isupper())


ops_settings = OpsSettings()
