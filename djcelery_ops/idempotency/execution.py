"""``run_idempotently``: what ``OpsTask.__call__`` does for a task with a key."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from celery import current_task
from celery.exceptions import Reject, Retry
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.idempotency.claim import Claim, claim_lease, complete_lease, release, run_atomic
from djcelery_ops.idempotency.keys import delivery_key, header_key, key_from_option
from djcelery_ops.idempotency.models import IdempotencyKey
from djcelery_ops.logs import log_event
from djcelery_ops.signals import duplicate_suppressed
from djcelery_ops.wire import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_WAIT_SINCE_HEADER,
    custom_headers,
    request_header,
)

logger = logging.getLogger("djcelery_ops.idempotency")


class IdempotencyKeyBusy(Exception):
    """Another execution holds the key's lease (raised in eager mode; a worker retries)."""

    def __init__(self, key: str, owner_task_id: str, retry_in: float) -> None:
        super().__init__(key, owner_task_id, retry_in)  # picklable: args match __init__
        self.key, self.owner_task_id, self.retry_in = key, owner_task_id, retry_in

    def __str__(self) -> str:
        return f"idempotency key {self.key!r} is held by task {self.owner_task_id}"


def current_idempotency_key() -> str | None:
    """The key of the running task, to pass downstream as its Idempotency-Key."""
    task = current_task
    return getattr(task.request, IDEMPOTENCY_KEY_HEADER, None) if task else None


def key_for_request(task: Any, args: Any, kwargs: Any) -> str | None:
    """The per-call header wins over the task's ``idempotency_key`` option."""
    return header_key(task.request) or key_from_option(task, args, kwargs)


def key_and_mode(task: Any, args: Any, kwargs: Any) -> tuple[str | None, str]:
    key = key_for_request(task, args, kwargs)
    if key is not None:
        return key, task.idempotency_mode
    # A delivery without a key of its own that must still run once: lease mode, so the
    # body keeps its own transactions and a failure frees the key for the task's retries.
    return delivery_key(task.request), IdempotencyKey.Mode.LEASE


def lease_seconds(task: Any) -> float:
    """The task's hard time limit (per call, else the task's) plus the margin."""
    timelimit = getattr(task.request, "timelimit", None) or (None, None)
    hard = timelimit[0] or task.time_limit or ops_settings.IDEMPOTENCY_DEFAULT_LEASE_SECONDS
    return float(hard) + float(ops_settings.IDEMPOTENCY_LEASE_MARGIN_SECONDS)


def run_idempotently(task: Any, args: Any, kwargs: Any, call: Callable[[], Any]) -> Any:
    """Run ``call`` (the task body) at most once per key; a duplicate gets the stored result."""
    request = task.request
    if getattr(task, "unique_for", None):
        from djcelery_ops.idempotency.unique import release_enqueue_lock

        release_enqueue_lock(task, args, kwargs, request.id)
    if request.called_directly:
        return call()  # a plain function call, not a delivery
    key, mode = key_and_mode(task, args, kwargs)
    if key is None:
        return call()
    setattr(request, IDEMPOTENCY_KEY_HEADER, key)  # noqa: B010 - the body reads it downstream
    owner = str(request.id or "")
    if mode == IdempotencyKey.Mode.ATOMIC:
        claim, result = run_atomic(key, task_name=task.name, owner_task_id=owner, body=call)
        return result if claim.claimed else _duplicate(task, claim)
    if mode == IdempotencyKey.Mode.LEASE:
        return _run_leased(task, key, owner, call)
    raise ImproperlyConfigured(f"idempotency_mode of {task.name} must be 'atomic' or 'lease'")


def _run_leased(task: Any, key: str, owner: str, call: Callable[[], Any]) -> Any:
    claim = claim_lease(
        key, task_name=task.name, owner_task_id=owner, lease_seconds=lease_seconds(task)
    )
    if not claim.claimed:
        return _duplicate(task, claim)
    assert claim.token is not None
    try:
        result = call()
    except BaseException:
        release(key, claim.token)  # failed: a retry or a replay may claim it again
        raise
    if not complete_lease(key, claim.token, result):
        logger.warning(
            "idempotency key %s was taken over (lease expired) while task %s ran",
            key, owner,
        )  # fmt: skip
    return result


def _duplicate(task: Any, claim: Claim) -> Any:
    existing = claim.existing
    assert existing is not None
    if existing.state == IdempotencyKey.State.DONE:
        log_event(
            "idempotency.duplicate_skipped",
            task_id=task.request.id,
            task_name=task.name,
            idempotency_key=claim.key,
            completed_by=existing.owner_task_id,
            result_stored=existing.result_stored,
        )
        duplicate_suppressed.send_robust(run_idempotently, task_name=task.name)
        return existing.result
    return _wait_for_holder(task, existing)


def _wait_for_holder(task: Any, existing: IdempotencyKey) -> Any:
    """The key is held by a live lease: look again soon, then less often, within a bound.

    Most holders end long before their lease (a duplicate delivered while the first copy
    runs), so the first look comes after a second and each wait is as long as the time
    waited so far (1, 1, 2, 4, 8 s...), never past the lease's end: a holder's end is
    seen within about its run time again, a dead holder's lease after about log2(lease)
    looks. Waiting is not failing: the task is re-sent with its retry count unchanged
    (Celery's ``retry`` would spend ``max_retries``), and the time it has waited travels
    in a header. Past ``DJCELERY_OPS_IDEMPOTENCY_MAX_WAIT_SECONDS`` it fails with
    ``IdempotencyKeyBusy``, dead-lettered with reason ``idempotency_key_busy``.
    """
    now = timezone.now()
    since = now if task.request.is_eager else _waiting_since(task.request)
    waited = (now - since).total_seconds()
    expires = existing.lease_expires_at
    remaining = (expires - now).total_seconds() if expires else 1.0
    countdown = max(min(remaining + 0.5, waited, lease_seconds(task)), 1.0)
    busy = IdempotencyKeyBusy(existing.key, existing.owner_task_id, countdown)
    if task.request.is_eager:
        raise busy
    left = float(ops_settings.IDEMPOTENCY_MAX_WAIT_SECONDS) - waited
    fields = {
        "task_id": task.request.id,
        "task_name": task.name,
        "idempotency_key": existing.key,
        "held_by": existing.owner_task_id,
    }
    if left <= 0:
        log_event("idempotency.key_wait_exhausted", level=logging.ERROR, **fields)
        raise busy
    countdown = min(countdown, max(left, 0.1))
    log_event("idempotency.key_busy", retry_in=round(countdown, 3), **fields)
    raise _send_again(task, busy, countdown, since)


def _waiting_since(request: Any) -> datetime.datetime:
    text = request_header(request, KEY_WAIT_SINCE_HEADER)
    try:
        return datetime.datetime.fromisoformat(text) if text else timezone.now()
    except ValueError:
        return timezone.now()


def _send_again(
    task: Any, busy: IdempotencyKeyBusy, countdown: float, since: datetime.datetime
) -> Retry:
    """What ``Task.retry`` does (same task id, routing and workflow), minus the count."""
    request = task.request
    headers = {**custom_headers(vars(request)), KEY_WAIT_SINCE_HEADER: since.isoformat()}
    signature = task.signature_from_request(
        request, countdown=countdown, retries=request.retries, headers=headers
    )
    try:
        signature.apply_async()
    except Exception as error:
        raise Reject(error, requeue=False) from error
    return Retry(exc=busy, when=countdown, sig=signature)  # type: ignore[arg-type]
