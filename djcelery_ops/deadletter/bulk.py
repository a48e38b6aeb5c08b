"""Replay or discard of many dead letters in a worker, with progress an operator can watch.

A request cannot replay 500,000 rows: a proxy or gunicorn cuts it after a minute or two.
``start`` records a ``BulkAction`` and hands it to a worker (task
``djcelery_ops.tasks.run_bulk_action``); ``run`` works through the selection in keyset
batches for one slice of ``DEAD_LETTER_BULK_SLICE_SECONDS``, and the task sends a
continuation for the next slice, so no execution meets the task time limits or the
broker's visibility timeout.

Each batch is one transaction: the claim of its rows, their ``Replay``/``Discard`` rows,
their ``LogEntry`` rows and the action's figures (done, skipped, last id read) commit
together, and a replay's messages are published when it commits (the outbox). A worker
killed mid-batch leaves nothing of that batch; its redelivered message resumes after the
last committed one, and the figures stay exact.

The fence: an action has the id of the one message allowed to run it (``task_id``). Each
batch writes the figures only where that id is still its own, so a stale redelivery, or
the slice a ``resume`` took over from, rolls its batch back and stops.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from celery import Celery
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import transaction
from django.db.models import Case, DateTimeField, F, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.discard import discard
from djcelery_ops.deadletter.models import BulkAction, DeadLetter
from djcelery_ops.deadletter.outbox import ReplayError, celery_app, recover_replays
from djcelery_ops.deadletter.replay import replay
from djcelery_ops.deadletter.selection import IdCursor, Selection
from djcelery_ops.deadletter.transitions import Outcome, actor_of

if TYPE_CHECKING:
    from djcelery_ops.deadletter.transitions import Actor

logger = logging.getLogger("djcelery_ops.deadletter")

TASK_NAME = "djcelery_ops.tasks.run_bulk_action"
Status = BulkAction.Status
UNFINISHED = (Status.QUEUED, Status.RUNNING)
RESUMABLE = (*UNFINISHED, Status.FAILED)

# What ``run`` ended with; MORE: the slice is over, a continuation should follow.
DONE, CANCELLED, MORE, STEPPED_ASIDE = "done", "cancelled", "more", "stepped aside"

_DATES = ("since", "until")


class Superseded(Exception):
    """Another message runs the action now (``resume``), or it was removed."""


def selection_data(selection: Selection) -> dict[str, Any]:
    """The selection as JSON for ``BulkAction.selection`` (ids and limit are not kept:
    a bulk action is a whole filter, which stays cheap to store however many rows)."""
    if selection.ids or selection.limit:
        raise ValueError("a bulk action takes filters, not ids or a limit")
    data: dict[str, Any] = {}
    for name in ("task", "failure_reason", "exception", "fingerprint", "queue", *_DATES):
        value = getattr(selection, name)
        if value is not None:
            data[name] = value.isoformat() if name in _DATES else value
    return data


def selection_of(data: dict[str, Any]) -> Selection:
    values: dict[str, Any] = {
        name: datetime.datetime.fromisoformat(value) if name in _DATES else value
        for name, value in data.items()
    }
    return Selection(**values)


def start(
    selection: Selection, *, action: str, by: Actor, reason: str, app: Celery | None = None
) -> BulkAction:
    """Record the action and hand it to a worker once the caller's transaction commits.

    Raises ``ReplayError`` when the broker refuses the message (the action is then marked
    failed; nothing was changed).
    """
    if action not in BulkAction.Action.values:
        raise ValueError(f"unknown bulk action {action!r}")
    if not reason.strip():
        raise ValueError("a reason is required")
    data = selection_data(selection)
    user, by_text = actor_of(by)
    row = BulkAction.objects.create(
        action=action, selection=data, reason=reason, user=user, by=by_text,
        task_id=str(uuid.uuid4()),
    )  # fmt: skip
    transaction.on_commit(lambda: _send(row.pk, row.task_id, app))
    return row


def resume(actions: QuerySet[BulkAction], *, app: Celery | None = None) -> int:
    """Hand unfinished or failed actions to a worker again, under a new message id; the
    message that ran one before steps aside at its next batch. Returns how many."""
    resumed = 0
    for pk in actions.filter(status__in=RESUMABLE).values_list("pk", flat=True):
        task_id = str(uuid.uuid4())
        handed = BulkAction.objects.filter(pk=pk, status__in=RESUMABLE).update(
            task_id=task_id,
            status=Case(When(status=Status.FAILED, then=Value(Status.QUEUED)), default=F("status")),
            error="",
            finished_at=None,
            updated_at=timezone.now(),
        )
        if handed:
            _send(pk, task_id, app)
            resumed += 1
    return resumed


def cancel(actions: QuerySet[BulkAction]) -> int:
    """Stop actions: a queued one at once, a running one after its current batch."""
    now = timezone.now()
    queued = actions.filter(status=Status.QUEUED).update(
        status=Status.CANCELLED, finished_at=now, updated_at=now
    )
    running = actions.filter(status=Status.RUNNING).update(cancel_requested=True)
    return queued + running


def run(
    pk: int,
    task_id: str,
    *,
    slice_seconds: float | None = None,
    batch_size: int | None = None,
    app: Celery | None = None,
) -> str:
    """Work on the action for one slice: ``DONE``, ``CANCELLED``, ``MORE`` (send a
    continuation) or ``STEPPED_ASIDE`` (not this message's to run)."""
    now = timezone.now()
    claimed = BulkAction.objects.filter(pk=pk, task_id=task_id, status__in=UNFINISHED).update(
        status=Status.RUNNING,
        started_at=Coalesce("started_at", Value(now, output_field=DateTimeField())),
        updated_at=now,
    )
    if not claimed:
        return STEPPED_ASIDE
    action = BulkAction.objects.get(pk=pk)
    selection = selection_of(action.selection).queryset()
    if action.total is None:
        BulkAction.objects.filter(pk=pk).update(total=selection.count())
    if action.cancel_requested:
        return _finish(pk, task_id, Status.CANCELLED)
    if action.action == BulkAction.Action.REPLAY:
        # A batch committed by a slice killed before it published: the killed process is
        # gone (this message holds the action), so its replays go out now, same task ids.
        recover_replays(older_than=0, run_id=run_id_of(action), app=app)
    if slice_seconds is None:
        slice_seconds = ops_settings.DEAD_LETTER_BULK_SLICE_SECONDS
    deadline = time.monotonic() + slice_seconds
    cursor = IdCursor(selection.filter(pk__gt=action.last_id))
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    try:
        while chunk := cursor.take(size):
            if _batch(action, task_id, chunk, app).cancel_requested:
                return _finish(pk, task_id, Status.CANCELLED)
            # At least one batch per slice, so every slice moves on; a short batch was
            # the last one (the cursor takes what matches), so finish without a slice more.
            if len(chunk) == size and time.monotonic() >= deadline:
                return MORE
    except Superseded:
        return STEPPED_ASIDE
    return _finish(pk, task_id, Status.DONE)


def run_id_of(action: BulkAction) -> str:
    """The ``Replay.run_id`` of the action's replays."""
    return f"bulk-{action.pk}"


def hand_on(pk: int, task_id: str, *, app: Celery | None = None) -> bool:
    """After a slice: the next one under a new message id; False if this one lost it."""
    following = str(uuid.uuid4())
    rows = BulkAction.objects.filter(pk=pk, task_id=task_id, status=Status.RUNNING)
    if not rows.update(task_id=following, updated_at=timezone.now()):
        return False
    _send(pk, following, app)
    return True


def note_error(pk: int, task_id: str, error: str, *, final: bool = False) -> None:
    """Keep why a slice failed (``final``: no more retries, the action is failed)."""
    changes: dict[str, Any] = {"error": error[:10_000], "updated_at": timezone.now()}
    if final:
        changes.update(status=Status.FAILED, finished_at=timezone.now())
    BulkAction.objects.filter(pk=pk, task_id=task_id, status__in=UNFINISHED).update(**changes)


def _batch(action: BulkAction, task_id: str, chunk: list[int], app: Celery | None) -> BulkAction:
    """One batch and its figures in one transaction; the action as written."""
    by: Actor = action.user if action.user is not None else action.by
    with transaction.atomic():
        if action.action == BulkAction.Action.REPLAY:
            outcome = replay(chunk, by=by, reason=action.reason, app=app, run_id=run_id_of(action))
        else:
            outcome = discard(chunk, by=by, reason=action.reason)
        row = _count(action.pk, task_id, chunk[-1], outcome)
        if action.user_id is not None:
            log_in_admin_history(
                action.user_id, outcome.dead_letter_ids, f"{action.action}: {action.reason}"
            )
    logger.info(
        "bulk %s %d: %d done, %d skipped of %s",
        row.action, row.pk, row.done, row.skipped, row.total,
    )  # fmt: skip
    return row


def log_in_admin_history(user_id: Any, ids: list[int], message: str) -> None:
    """A ``LogEntry`` per changed dead letter (its admin history), read with the columns
    its ``str()`` needs only: a batch of 1,000 does not load 1,000 tracebacks."""
    if ids:
        LogEntry.objects.log_actions(
            user_id=user_id,
            queryset=DeadLetter.objects.filter(pk__in=ids).only("task_name", "task_id", "reason"),
            action_flag=CHANGE,
            change_message=message,
        )


def _count(pk: int, task_id: str, last_id: int, outcome: Outcome) -> BulkAction:
    rows = BulkAction.objects.select_for_update().filter(pk=pk, task_id=task_id)
    row = rows.filter(status=Status.RUNNING).first()
    if row is None:
        raise Superseded  # rolls the batch back with the transaction
    row.done += outcome.done
    row.skipped += sum(outcome.skipped.values())
    reasons = dict(row.skipped_reasons)
    for reason, count in outcome.skipped.items():
        reasons[reason] = reasons.get(reason, 0) + count
    row.skipped_reasons, row.batches, row.last_id = reasons, row.batches + 1, last_id
    row.updated_at = timezone.now()
    fields = ["done", "skipped", "skipped_reasons", "batches", "last_id", "updated_at"]
    row.save(update_fields=fields)
    return row


def _finish(pk: int, task_id: str, status: str) -> str:
    now = timezone.now()
    BulkAction.objects.filter(pk=pk, task_id=task_id, status=Status.RUNNING).update(
        status=status, finished_at=now, updated_at=now, error=""
    )
    return DONE if status == Status.DONE else CANCELLED


def _send(pk: int, task_id: str, app: Celery | None) -> None:
    try:
        (app or celery_app()).send_task(TASK_NAME, args=[pk], task_id=task_id)
    except Exception as error:  # kombu's errors vary by transport; the action must not hang
        note_error(pk, task_id, f"not handed to a worker: {error!r}", final=True)
        raise ReplayError(
            f"the bulk action was not handed to a worker: {error}", published=0, unconfirmed=0
        ) from error
