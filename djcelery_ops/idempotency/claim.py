"""Service functions of the claim / complete protocol, on the database clock.

A claim is ONE statement (``djcelery_ops.db.upsert``): ``INSERT ... ON CONFLICT (key) DO
UPDATE ... WHERE <claimable> RETURNING token``. A row comes back only when this caller
inserted the key or took over a failed key, an expired lease or an expired done key; the
token it returns fences every later write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models.functions import Now

from djcelery_ops.conf import ops_settings
from djcelery_ops.db import Sql, column, now_plus_sql, now_sql, proposed, upsert
from djcelery_ops.idempotency.models import IdempotencyKey
from djcelery_ops.logs import log_event

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


def _claim_values(
    key: str, task_name: str, owner_task_id: str, lease_seconds: float | None
) -> dict[str, Any]:
    """The row a claim proposes. Lease mode inserts it running with a lease; atomic mode
    inserts it done (with a null result), since nobody sees it before the transaction that
    runs the body commits."""
    now = now_sql()
    leased = lease_seconds is not None
    ttl = ops_settings.IDEMPOTENCY_KEY_TTL_SECONDS
    expires = None if leased or ttl is None else now_plus_sql(float(ttl))
    return {
        "key": key,
        "task_name": task_name,
        "mode": IdempotencyKey.Mode.LEASE if leased else IdempotencyKey.Mode.ATOMIC,
        "state": State.RUNNING if leased else State.DONE,
        "owner_task_id": owner_task_id,
        "token": 1,
        "lease_expires_at": now_plus_sql(lease_seconds) if lease_seconds is not None else None,
        "attempts": 1,
        "result": None,
        "result_stored": not leased,
        "created_at": now,
        "completed_at": None if leased else now,
        "expires_at": expires,
    }


def _takeover() -> tuple[dict[str, Any], Sql]:
    """What a claim of an existing key changes, and when it may: a failed key, a running
    key whose lease expired, or a done key past its time to live."""
    now = now_sql().text
    update: dict[str, Any] = {
        name: Sql(proposed(name))
        for name in (
            "task_name", "mode", "state", "owner_task_id", "lease_expires_at",
            "result", "result_stored", "completed_at", "expires_at",
        )
    }  # fmt: skip
    update["token"] = Sql(f"{column('token')} + 1")
    update["attempts"] = Sql(f"{column('attempts')} + 1")
    state, lease, expires = column("state"), column("lease_expires_at"), column("expires_at")
    where = Sql(
        f"{state} = 'failed' OR ({state} = 'running' AND {lease} < {now})"
        f" OR ({state} = 'done' AND {expires} < {now})"
    )
    return update, where


def claim_key(
    key: str, *, task_name: str, owner_task_id: str, lease_seconds: float | None
) -> Claim:
    """Claim ``key`` in one statement; with ``lease_seconds=None`` the claim has no lease
    and is meant to run inside the transaction that does the work (atomic mode)."""
    values = _claim_values(key, task_name, owner_task_id, lease_seconds)
    update, where = _takeover()
    for _attempt in range(3):
        token = upsert(
            IdempotencyKey, conflict="key", values=values, update=update, where=where,
            returning="token",
        )  # fmt: skip
        if token is not None:
            return Claim(key=key, token=int(token))
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


class CommitOutcomeUnknown(Exception):
    """The COMMIT of an atomic-mode task was sent, its answer lost, and the database could
    not be reached to check whether it committed. Dead-lettered as ``commit_unknown``: a
    replay runs the task if it did not commit and skips it as a duplicate if it did."""

    def __init__(self, key: str, owner_task_id: str) -> None:
        super().__init__(key, owner_task_id)  # picklable: args match __init__
        self.key, self.owner_task_id = key, owner_task_id

    def __str__(self) -> str:
        return (
            f"the commit of idempotency key {self.key!r} by task {self.owner_task_id} "
            "may or may not have happened: its answer was lost and the database could not "
            "be reached to check"
        )


def run_atomic(
    key: str, *, task_name: str, owner_task_id: str, body: Callable[[], Any]
) -> tuple[Claim, Any]:
    """Insert the key and run ``body`` in ONE transaction: its writes and the key commit
    together or not at all. A concurrent duplicate blocks on the unique index until this
    transaction ends, then finds the key done (skips) or free (runs).

    A connection error raised by the COMMIT itself does not say whether it happened: the
    key is then looked up on a new connection (``_verify_commit``).
    """
    committing = False  # True once only this transaction's COMMIT can raise
    outermost = not connection.in_atomic_block
    try:
        with transaction.atomic():
            claim = claim_key(
                key, task_name=task_name, owner_task_id=owner_task_id, lease_seconds=None
            )
            if not claim.claimed:
                return claim, None
            assert claim.token is not None
            result = body()
            if result is not None:  # the claim stored a null result already: one write less
                stored, ok = storable_result(result)
                rows = IdempotencyKey.objects.filter(key=key, token=claim.token)
                if not rows.update(result=stored, result_stored=ok, completed_at=Now()):
                    raise RuntimeError(f"idempotency key {key!r} changed hands in its transaction")
            committing = outermost
            return claim, result
    except (OperationalError, InterfaceError) as error:
        if not committing:
            raise
        assert claim.token is not None
        if not _verify_commit(key, claim.token, owner_task_id, error):
            raise
        log_event(
            "idempotency.commit_verified", level=logging.WARNING, task_id=owner_task_id,
            task_name=task_name, idempotency_key=key, commit_error=repr(error),
        )  # fmt: skip
        return claim, result


def _verify_commit(key: str, token: int, owner_task_id: str, error: Exception) -> bool:
    """Whether the lost COMMIT happened: our token holds the key, done, on a new connection.

    The row was inserted (or taken over) in the transaction that committed or not, so it is
    there with our token exactly when it did. Unreachable: ``CommitOutcomeUnknown``.
    """
    _close_quietly()
    try:
        rows = IdempotencyKey.objects.filter(
            key=key, token=token, owner_task_id=owner_task_id, state=State.DONE
        )
        return rows.exists()
    except (OperationalError, InterfaceError) as check_error:
        _close_quietly()
        logger.error(
            "idempotency key %s: COMMIT answer lost (%r), check failed (%r)",
            key, error, check_error,
        )  # fmt: skip
        raise CommitOutcomeUnknown(key, owner_task_id) from error


def _close_quietly() -> None:
    with contextlib.suppress(DatabaseError, InterfaceError):
        connection.close()
