"""Replay of dead letters: the service the admin and the commands call.

How a replay stays safe:

1. Claim (``transitions.claim``): in one transaction, ``UPDATE ... SET status='replayed'
   WHERE id IN (...) AND status='pending' RETURNING id``. Only the rows this statement
   changed are replayed, so two operators or two commands replaying the same rows at once
   publish each row once.
   The same transaction writes the ``Replay`` rows (with the new task ids).
2. Publish after commit (``transaction.on_commit``): a worker that runs the replayed task
   at once finds its ``Replay`` row, so its outcome is never lost.
3. The ``Replay`` rows are an outbox (``deadletter.outbox``): each carries the task id its
   message is published with, and is marked published once the broker confirmed it. A
   broker that fails mid-batch, or a process killed after the commit, leaves rows not
   marked; the next run publishes them again with the same task ids, and the worker runs a
   replayed task id once. So every claimed dead letter is executed, once, with no
   operator bookkeeping. (Publishing inside the transaction was rejected: a commit that
   fails after the publish would leave a running task whose claim was rolled back.)
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.db import in_values, insert_rows
from djcelery_ops.deadletter.call import BLOCKED_NEVER_DECODED, accepted_content_types
from djcelery_ops.deadletter.entries import LETTER_COLUMNS, Letter, OutboxEntry
from djcelery_ops.deadletter.models import DeadLetter, Replay
from djcelery_ops.deadletter.outbox import ReplayError, celery_app, publish_replays
from djcelery_ops.deadletter.sealed import SKIP_KEY_MISSING, open_payload, seal_edits, unopenable
from djcelery_ops.deadletter.selection import SKIP_NOT_RAW, id_batches, skip_not_accepted
from djcelery_ops.deadletter.transitions import (
    Outcome,
    Progress,
    actor_of,
    claim_rows,
    count_skipped,
)
from djcelery_ops.signals import replays_published

if TYPE_CHECKING:
    from celery import Celery

    from djcelery_ops.deadletter.transitions import Actor

logger = logging.getLogger("djcelery_ops.deadletter")

Status = DeadLetter.Status


def _edits(letter: Letter, args: Any, kwargs: Any, queue: str | None) -> dict[str, Any]:
    """What the operator changed, old and new; args and kwargs sealed like the letter's."""
    edits: dict[str, Any] = {}
    payload = open_payload(letter) if args is not None or kwargs is not None else None
    for field, new in (("args", args), ("kwargs", kwargs), ("queue", queue)):
        if new is None:
            continue
        old = letter.queue if field == "queue" else getattr(payload, field)
        if new != old:
            edits[field] = {"old": old, "new": new}
    return seal_edits(edits)


def replay(
    dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int],
    *,
    by: Actor,
    reason: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    batch_size: int | None = None,
    run_id: str | None = None,
    app: Celery | None = None,
    progress: Progress | None = None,
    keep_ids: bool = True,
) -> Outcome:
    """Republish pending dead letters as new tasks, each at most once; see module doc.

    A plain replay publishes each row's kept call (``deadletter.call``) decoded with the
    app's ``accept_content`` and encoded again with the same serializer, so the task gets
    the values and types of the original delivery. Rows with a ``replay_blocker``
    (truncated, not encodable, body never decoded) and rows whose call's content type the
    app does not accept are skipped. ``args``/``kwargs``/``queue`` replace the stored
    values for every row (edit and replay); giving both args and kwargs also allows
    replaying a row with a ``replay_blocker``.
    Called inside an atomic block, publishing happens when that block commits.
    Raises ``ReplayError`` when the broker fails; its ``outcome`` says what was claimed and
    published so far, and the claimed rows stay in the outbox for the next run.
    A queryset is read in keyset batches of ``batch_size`` (``selection.id_batches``), each
    committed and published on its own; ``progress`` is called after each, and
    ``keep_ids=False`` keeps no list of ids, so memory holds one batch however many rows.
    """
    if not reason.strip():
        raise ValueError("a reason is required")
    _check_edit_types(args, kwargs)
    try:
        app = app or celery_app()  # refuse before claiming anything, not after
    except ImproperlyConfigured as error:
        raise ReplayError(f"nothing was replayed: {error}", published=0, unconfirmed=0) from error
    user, by_text = actor_of(by)
    outcome = Outcome(run_id=run_id or uuid.uuid4().hex, keep_ids=keep_ids)
    editable = args is not None and kwargs is not None
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    accepted = accepted_content_types((app or celery_app()).conf.accept_content)
    for chunk in id_batches(dead_letters, size):
        with transaction.atomic():
            ready = chunk if editable else _decodable(chunk, accepted, outcome)
            ready = _openable(ready, outcome)
            claimed = _claim(ready, allow_truncated=editable)
            count_skipped(outcome, ready, [letter.pk for letter in claimed], editable)
            if claimed:
                edits = partial(_edits, args=args, kwargs=kwargs, queue=queue)
                _outbox(outcome, claimed, user, by_text, reason, app, edits)
        if progress is not None:
            progress(outcome, [letter.pk for letter in claimed])
    if outcome.skipped:
        skipped = sum(outcome.skipped.values())
        replays_published.send_robust(replay, published=0, unconfirmed=0, skipped=skipped)
    return outcome


RAW_EDIT = "raw_body"  # ``Replay.edits`` key of a republished original message


def republish_original(
    dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int],
    *,
    by: Actor,
    reason: str,
    queue: str | None = None,
    batch_size: int | None = None,
    run_id: str | None = None,
    app: Celery | None = None,
    progress: Progress | None = None,
    keep_ids: bool = True,
) -> Outcome:
    """Publish the original bytes of messages that were never decoded, unchanged.

    For dead letters whose body was never decoded (``replay_blocker`` "body never
    decoded": a content type the worker refused, an undecodable body): the raw body goes
    out with its content type and encoding and its original headers, under a new task id
    and the replay header, to ``queue`` (a worker that accepts it) or the original queue.
    An explicit choice, apart from ``replay``: nothing here checks what the body holds.
    Same claim, outbox and batches as ``replay``.
    """
    if not reason.strip():
        raise ValueError("a reason is required")
    user, by_text = actor_of(by)
    outcome = Outcome(run_id=run_id or uuid.uuid4().hex, keep_ids=keep_ids)
    edits: dict[str, Any] = {RAW_EDIT: {"old": None, "new": True}}
    if queue:
        edits["queue"] = {"old": None, "new": queue}
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    for chunk in id_batches(dead_letters, size):
        with transaction.atomic():
            raw = set(
                DeadLetter.objects.filter(
                    pk__in=chunk, replay_blocker=BLOCKED_NEVER_DECODED, options__has_key="raw_body"
                ).values_list("pk", flat=True)
            )
            outcome.skipped[SKIP_NOT_RAW] += len(set(chunk) - raw)
            ready = _openable(sorted(raw), outcome)
            claimed = _claim(ready, allow_truncated=True)
            count_skipped(outcome, ready, [letter.pk for letter in claimed], True)
            if claimed:
                _outbox(outcome, claimed, user, by_text, reason, app, lambda _letter: edits)
        if progress is not None:
            progress(outcome, [letter.pk for letter in claimed])
    if not outcome.skipped[SKIP_NOT_RAW]:
        del outcome.skipped[SKIP_NOT_RAW]
    return outcome


def _claim(ids: list[int], *, allow_truncated: bool) -> list[Letter]:
    """Claim pending rows for replay, reading in the same statement what publishing needs."""
    if not ids:
        return []
    rows = claim_rows(ids, Status.REPLAYED, allow_truncated=allow_truncated, columns=LETTER_COLUMNS)
    return [Letter(*map(_from_db, LETTER_COLUMNS, row)) for row in rows]


_JSON_COLUMNS = frozenset(("args", "kwargs", "options"))


def _from_db(column: str, value: Any) -> Any:
    """A raw column value as the model field gives it (JSON columns come back as text)."""
    if column in _JSON_COLUMNS:
        return json.loads(value) if isinstance(value, str | bytes) else value
    if column == "call_body_base64":
        return bool(value)
    return value


_REPLAY_COLUMNS = (
    "dead_letter_id", "user_id", "by", "reason", "run_id", "edits", "new_task_id", "outcome",
    "created_at",
)  # fmt: skip


def _outbox(
    outcome: Outcome,
    claimed: list[Letter],
    user: Any,
    by_text: str,
    reason: str,
    app: Celery | None,
    edits_of: Any,
) -> None:
    """Write the claimed rows' ``Replay`` rows and publish them once this block commits."""
    entries = [OutboxEntry(str(uuid.uuid4()), edits_of(letter), letter) for letter in claimed]
    user_id, now, pending = getattr(user, "pk", None), timezone.now(), Replay.Outcome.PENDING
    rows = [
        (entry.dead_letter.pk, user_id, by_text, reason, outcome.run_id, entry.edits,
         entry.new_task_id, pending, now)
        for entry in entries
    ]  # fmt: skip
    insert_rows(Replay, columns=_REPLAY_COLUMNS, rows=rows)
    _count(outcome, entries)
    # The outbox: claim, lineage and task ids commit together, then publish.
    transaction.on_commit(partial(_publish, outcome, entries, app))


def _decodable(ids: list[int], accepted: set[str], outcome: Outcome) -> list[int]:
    """``ids`` without the rows whose kept call this app may not decode (skipped, said why).

    Checked before the claim: a claimed row that cannot be decoded would stay in the outbox.
    """
    refused = (
        DeadLetter.objects.filter(pk__in=in_values(ids, "bigint"))
        .filter(status=Status.PENDING, replay_blocker="")
        .exclude(call_content_type="")
        .exclude(call_content_type__in=accepted)
        .values_list("pk", "call_content_type")
    )
    left = set(ids)
    for pk, content_type in refused:
        outcome.skipped[skip_not_accepted(content_type)] += 1
        left.discard(pk)
    return sorted(left)


def _openable(ids: list[int], outcome: Outcome) -> list[int]:
    """``ids`` without the rows no configured key decrypts: skipped, said why, left pending
    (checked before the claim, so nothing is published without its real payload)."""
    refused = unopenable(ids) if ids else set()
    if refused:
        outcome.skipped[SKIP_KEY_MISSING] += len(refused)
    return [pk for pk in ids if pk not in refused]


def _count(outcome: Outcome, replays: list[OutboxEntry]) -> None:
    for replay_row in replays:
        outcome.per_task[replay_row.dead_letter.task_name] += 1
    outcome.done += len(replays)
    outcome.add_ids(
        (replay_row.dead_letter_id for replay_row in replays),
        (replay_row.new_task_id for replay_row in replays),
    )


def _check_edit_types(args: Any, kwargs: Any) -> None:
    if args is not None and not isinstance(args, list):
        raise TypeError("args must be a list")
    if kwargs is not None and not (
        isinstance(kwargs, dict) and all(isinstance(key, str) for key in kwargs)
    ):
        raise TypeError("kwargs must be an object with string keys")


def _publish(outcome: Outcome, replays: list[OutboxEntry], app: Celery | None) -> None:
    try:
        outcome.published += publish_replays(replays, app)
    except ReplayError as error:
        outcome.published += error.published
        error.outcome = outcome
        raise
