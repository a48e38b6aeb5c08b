"""Service functions of the claim / complete protocol, on the database clock.

A claim is ONE statement: ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE <claimable>
RETURNING token``. A row comes back only when this caller inserted the key or took over a
failed key, an expired lease or an expired done key; the token it returns fences every
later write. The ORM cannot say whether ``bulk_create(ignore_conflicts=True)`` inserted a
row, hence raw SQL (PostgreSQL, and SQLite >= 3.35 for ``RETURNING``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models.functions import Now

from djcelery_ops.conf import ops_settings
from djcelery_ops.idempotency.models import IdempotencyKey

logger = logging.getLogger("djcelery_ops.idempotency")

State = IdempotencyKey.State


@dataclasses.dataclass(frozen=True)
class Claim:
    """The outcome of a claim: a token when this caller holds the key, else the row."""

    key: str
    token: int | None
    existing: IdempotencyKey | None = None

    @property
    def claimed(self) -> bool:
        return self.token is not None


def _clock(offset_param: bool = False) -> str:
    """The database's current time as SQL, optionally plus a number of seconds (a param)."""
    if connection.vendor == "postgresql":
        return (
            "clock_timestamp() + make_interval(secs => %s)"
            if offset_param
            else ("clock_timestamp()")
        )
    if connection.vendor == "sqlite":
        # Django stores SQLite datetimes as UTC text; this is the same text form.
        fmt = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'"
        return f"{fmt}, %s)" if offset_param else f"{fmt})"
    raise NotImplementedError(
        f"idempotency keys need PostgreSQL or SQLite, not {connection.vendor}"
    )


def _seconds_param(seconds: float) -> Any:
    return seconds if connection.vendor == "postgresql" else f"{seconds:+.3f} seconds"


def _claim_sql(leased: bool, expires: bool) -> str:
    """Lease mode inserts a running row; atomic mode inserts it done (with a null result),
    since nobody sees it before the transaction that runs the body commits."""
    table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    now = _clock()
    lease = _clock(offset_param=True) if leased else "NULL"
    state, stored, completed = ("'running'", "false", "NULL") if leased else ("'done'", "true", now)
    expires_at = _clock(offset_param=True) if expires else "NULL"
    return f"""
        INSERT INTO {table} (key, task_name, mode, state, owner_task_id, token,
            lease_expires_at, attempts, result, result_stored, created_at, completed_at,
            expires_at)
        VALUES (%s, %s, %s, {state}, %s, 1, {lease}, 1, NULL, {stored}, {now}, {completed},
            {expires_at})
        ON CONFLICT (key) DO UPDATE SET
            task_name = excluded.task_name, mode = excluded.mode, state = excluded.state,
            owner_task_id = excluded.owner_task_id, token = {table}.token + 1,
            lease_expires_at = excluded.lease_expires_at, attempts = {table}.attempts + 1,
            result = NULL, result_stored = excluded.result_stored,
            completed_at = excluded.completed_at, expires_at = excluded.expires_at
        WHERE {table}.state = 'failed'
            OR ({table}.state = 'running' AND {table}.lease_expires_at < {now})
            OR ({table}.state = 'done' AND {table}.expires_at < {now})
        RETURNING token
    """


def claim_key(
    key: str, *, task_name: str, owner_task_id: str, lease_seconds: float | None
) -> Claim:
    """Claim ``key`` in one statement; with ``lease_seconds=None`` the claim has no lease
    and is meant to run inside the transaction that does the work (atomic mode)."""
    mode = IdempotencyKey.Mode.ATOMIC if lease_seconds is None else IdempotencyKey.Mode.LEASE
    params: list[Any] = [key, task_name, mode, owner_task_id]
    if lease_seconds is not None:
        params.append(_seconds_param(lease_seconds))
    ttl = ops_settings.IDEMPOTENCY_KEY_TTL_SECONDS
    expires = lease_seconds is None and ttl is not None
    if ttl is not None and expires:
        params.append(_seconds_param(float(ttl)))
    sql = _claim_sql(leased=lease_seconds is not None, expires=expires)
    for _attempt in range(3):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is not None:
            return Claim(key=key, token=int(row[0]))
        existing = IdempotencyKey.objects.filter(key=key).first()
        if existing is not None:
            return Claim(key=key, token=None, existing=existing)
        # Purged between the two statements: claim again.
    raise RuntimeError(f"could not claim idempotency key {key!r}")


def claim_lease(key: str, *, task_name: str, owner_task_id: str, lease_seconds: float) -> Claim:
    """Claim ``key`` for ``lease_seconds`` (autocommit: the claim is visible at once)."""
    return claim_key(
        key, task_name=task_name, owner_task_id=owner_task_id, lease_seconds=lease_seconds
    )


def storable_result(value: Any) -> tuple[Any, bool]:
    """The result as JSON-ready data, or ``(None, False)`` when not JSON or too big."""
    try:
        text = json.dumps(value, cls=DjangoJSONEncoder)
    except (TypeError, ValueError):
        return None, False
    if len(text.encode()) > ops_settings.IDEMPOTENCY_RESULT_MAX_BYTES:
        return None, False
    return json.loads(text), True


def complete_key(key: str, token: int, result: Any) -> bool:
    """Mark the key done with its result, only if ``token`` still holds it."""
    stored, ok = storable_result(result)
    ttl = ops_settings.IDEMPOTENCY_KEY_TTL_SECONDS
    updated = IdempotencyKey.objects.filter(key=key, token=token, state=State.RUNNING).update(
        state=State.DONE,
        result=stored,
        result_stored=ok,
        completed_at=Now(),
        lease_expires_at=None,
        expires_at=None if ttl is None else Now() + timedelta(seconds=ttl),
    )
    return bool(updated)


complete_lease = complete_key


def release(key: str, token: int) -> bool:
    """Mark the key failed (claimable again), only if ``token`` still holds it."""
    rows = IdempotencyKey.objects.filter(key=key, token=token, state=State.RUNNING)
    return bool(rows.update(state=State.FAILED, lease_expires_at=None))


def run_atomic(
    key: str, *, task_name: str, owner_task_id: str, body: Callable[[], Any]
) -> tuple[Claim, Any]:
    """Insert the key and run ``body`` in ONE transaction: its writes and the key commit
    together or not at all. A concurrent duplicate blocks on the unique index until this
    transaction ends, then finds the key done (skips) or free (runs)."""
    with transaction.atomic():
        claim = claim_key(key, task_name=task_name, owner_task_id=owner_task_id, lease_seconds=None)
        if not claim.claimed:
            return claim, None
        assert claim.token is not None
        result = body()
        if result is not None:  # the claim stored a null result already: one write less
            stored, ok = storable_result(result)
            rows = IdempotencyKey.objects.filter(key=key, token=claim.token)
            if not rows.update(result=stored, result_stored=ok, completed_at=Now()):
                raise RuntimeError(f"idempotency key {key!r} changed hands in its transaction")
        return claim, result
