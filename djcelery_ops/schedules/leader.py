"""The beat leader lease: one row per lease name, judged by the database clock.

Acquiring and renewing are one conditional UPDATE (``holder`` is us, or the lease expired),
so of several beat processes exactly one wins; the row count says whether we did. Works on
PostgreSQL and SQLite alike, and nobody's local clock matters for who may take over.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Case, DateTimeField, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Now

from djcelery_ops.schedules.models import SchedulerLease

NEVER_HELD = datetime(2000, 1, 1, tzinfo=UTC)


def make_holder_id() -> str:
    """Names one scheduler instance: host and pid for people, a nonce so restarts differ."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def holder_pid(holder: str) -> int | None:
    """The process id inside a holder id made by ``make_holder_id``."""
    parts = holder.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def try_acquire(name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease for ``seconds`` of database time; True if we hold it now."""
    if _conditional_update(name, holder, seconds):
        return True
    if SchedulerLease.objects.filter(name=name).exists():
        return False
    SchedulerLease.objects.get_or_create(name=name, defaults={"expires_at": NEVER_HELD})
    return _conditional_update(name, holder, seconds)


def _conditional_update(name: str, holder: str, seconds: float) -> bool:
    expires_at = ExpressionWrapper(
        Now() + Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )
    updated = (
        SchedulerLease.objects.filter(name=name)
        .filter(Q(holder=holder) | Q(expires_at__lt=Now()))
        .update(
            holder=holder,
            expires_at=expires_at,
            acquired_at=Case(When(holder=holder, then=F("acquired_at")), default=Now()),
        )
    )
    return updated == 1


def release(name: str, holder: str) -> bool:
    """Give the lease up at once (clean shutdown), so a standby need not wait it out."""
    return bool(
        SchedulerLease.objects.filter(name=name, holder=holder).update(
            holder="", acquired_at=None, expires_at=NEVER_HELD
        )
    )


@dataclass(frozen=True)
class LeaseState:
    name: str
    holder: str
    acquired_at: datetime | None
    expires_at: datetime
    database_now: datetime

    @property
    def is_held(self) -> bool:
        return bool(self.holder) and self.expires_at > self.database_now

    @property
    def seconds_left(self) -> float:
        return (self.expires_at - self.database_now).total_seconds()


def lease_states() -> list[LeaseState]:
    """Every lease with the database's current time, to judge expiry by the same clock."""
    rows = SchedulerLease.objects.annotate(database_now=Now()).order_by("name")
    return [
        LeaseState(row.name, row.holder, row.acquired_at, row.expires_at, row.database_now)
        for row in rows
    ]


def lease_state(name: str) -> LeaseState | None:
    return next((state for state in lease_states() if state.name == name), None)
