"""The beat leader lease: one row per lease name, judged by the database clock.

Acquiring and renewing are one statement (``djcelery_ops.db.upsert``): insert the lease, or
take it over where ``holder`` is us or the lease expired, returning a row only to the
winner, so of several beat processes exactly one wins. Works on
PostgreSQL and SQLite alike, and nobody's local clock matters for who may take over.

A takeover increments the lease's ``term`` (a renewal keeps it): the winner gets the term
back and fences its writes with it (``fence``), so a leader that lost the lease
without noticing (frozen, cut off from the database) cannot overwrite its successor's.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection
from django.db.models.functions import Now

from djcelery_ops.db import Sql, column, now_plus_sql, now_sql, proposed, upsert
from djcelery_ops.schedules.models import SchedulerLease

NEVER_HELD = datetime(2000, 1, 1, tzinfo=UTC)


def make_holder_id() -> str:
    """Names one scheduler instance: host and pid for people, a nonce so restarts differ."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def holder_pid(holder: str) -> int | None:
    """The process id inside a holder id made by ``make_holder_id``."""
    parts = holder.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def try_acquire(name: str, holder: str, seconds: float) -> int | None:
    """Take or renew the lease for ``seconds`` of database time.

    Returns the term (>= 1) when we hold the lease now, else None.
    """
    now = now_sql()
    held_by_us = f"{column('holder')} = {proposed('holder')}"
    won = upsert(
        SchedulerLease,
        conflict="name",
        values={
            "name": name, "holder": holder, "acquired_at": now,
            "expires_at": now_plus_sql(seconds), "term": 1,
        },
        update={
            "holder": Sql(proposed("holder")),
            "expires_at": Sql(proposed("expires_at")),
            # A renewal keeps the start of the term; a takeover starts a new one.
            "acquired_at": Sql(
                f"CASE WHEN {held_by_us} THEN {column('acquired_at')}"
                f" ELSE {proposed('acquired_at')} END"
            ),
            "term": Sql(
                f"CASE WHEN {held_by_us} THEN {column('term')} ELSE {column('term')} + 1 END"
            ),
        },
        where=Sql(f"{held_by_us} OR {column('expires_at')} < {now.text}"),
        returning="term",
    )  # fmt: skip
    return None if won is None else int(won)


def fence(name: str, holder: str, term: int) -> Sql:
    """A condition true while ``holder`` holds the lease in ``term`` (database clock): the
    fence of every write a leader makes."""
    quote = connection.ops.quote_name
    now = now_sql()
    return Sql(
        f"EXISTS (SELECT 1 FROM {quote(SchedulerLease._meta.db_table)}"
        f" WHERE {quote('name')} = %s AND {quote('holder')} = %s AND {quote('term')} = %s"
        f" AND {quote('expires_at')} > {now.text})",
        [name, holder, term, *now.params],
    )


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
