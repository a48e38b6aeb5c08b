"""Replay of dead letters: the service the admin and the commands call.

How a replay stays safe:

1. Claim (``transitions.claim``): in one transaction, ``UPDATE ... SET status='replayed'
   WHERE id IN (...) AND status='pending' RETURNING id``. Only the rows this statement
   changed are replayed, so two operators or two commands replaying the same rows at once
   publish each row once.
   The same transaction writes the ``Replay`` rows (with the new task ids).
2. Publish after commit (``transaction.on_commit``): a worker that runs the replayed task
   at once finds its ``Replay`` row, so its outcome is never lost.
3. A publish that fails (broker down) is compensated: the rows not published go back to
   ``pending`` and their ``Replay`` rows are deleted, then ``ReplayError`` is raised. The
   alternative, publishing inside the transaction, risks a message whose claim and lineage
   were rolled back (commit failure), i.e. a task running twice after a second replay;
   compensating leaves at worst a row marked replayed when the process dies between commit
   and publish, which is visible (a replay that stays pending) and replayable by hand.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from celery import current_app
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.models import DeadLetter, Replay
from djcelery_ops.deadletter.selection import chunks, selected_ids
from djcelery_ops.deadletter.transitions import Outcome, actor_of, claim, count_skipped
from djcelery_ops.wire import REPLAY_HEADER

if TYPE_CHECKING:
    from celery import Celery

    from djcelery_ops.deadletter.transitions import Actor

logger = logging.getLogger("djcelery_ops.deadletter")

Status = DeadLetter.Status


class ReplayError(Exception):
    """A replay could not be published; the rows not published stay pending."""

    def __init__(self, message: str, *, published: int, unpublished: int) -> None:
        super().__init__(message)
        self.published = published
        self.unpublished = unpublished


def celery_app() -> Celery:
    """The project's Celery app: ``DJCELERY_OPS_DEAD_LETTER_CELERY_APP`` or the current one."""
    path = ops_settings.DEAD_LETTER_CELERY_APP
    app: Celery = import_string(path) if path else current_app
    return app


def _edits(letter: DeadLetter, args: Any, kwargs: Any, queue: str | None) -> dict[str, Any]:
    edits: dict[str, Any] = {}
    for field, new in (("args", args), ("kwargs", kwargs), ("queue", queue)):
        old = getattr(letter, field)
        if new is not None and new != old:
            edits[field] = {"old": old, "new": new}
    return edits


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
) -> Outcome:
    """Republish pending dead letters as new tasks, each at most once; see module doc.

    ``args``/``kwargs``/``queue`` replace the stored values for every row (edit and
    replay); giving both args and kwargs also allows replaying a truncated payload.
    Called inside an atomic block, publishing happens when that block commits.
    Raises ``ReplayError`` when publishing fails (those rows are pending again).
    """
    if not reason.strip():
        raise ValueError("a reason is required")
    _check_edit_types(args, kwargs)
    user, by_text = actor_of(by)
    outcome = Outcome(run_id=run_id or uuid.uuid4().hex)
    editable = args is not None and kwargs is not None
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    for chunk in chunks(selected_ids(dead_letters), size):
        with transaction.atomic():
            claimed = claim(chunk, Status.REPLAYED, allow_truncated=editable)
            count_skipped(outcome, chunk, claimed, editable)
            if not claimed:
                continue
            rows = DeadLetter.objects.filter(pk__in=claimed).order_by("pk")
            letters = list(rows.defer("traceback", "exception_message"))
            replays = [
                Replay(
                    dead_letter=letter,
                    user=user,
                    by=by_text,
                    reason=reason,
                    run_id=outcome.run_id,
                    edits=_edits(letter, args, kwargs, queue),
                    new_task_id=str(uuid.uuid4()),
                )
                for letter in letters
            ]
            Replay.objects.bulk_create(replays)
            publish = partial(_publish_or_compensate, app, replays, args, kwargs, queue)
            transaction.on_commit(publish)
        for replay_row in replays:
            outcome.per_task[replay_row.dead_letter.task_name] += 1
        outcome.done += len(replays)
        outcome.dead_letter_ids.extend(letter.pk for letter in letters)
        outcome.new_task_ids.extend(replay_row.new_task_id for replay_row in replays)
    return outcome


def _check_edit_types(args: Any, kwargs: Any) -> None:
    if args is not None and not isinstance(args, list):
        raise TypeError("args must be a list")
    if kwargs is not None and not (
        isinstance(kwargs, dict) and all(isinstance(key, str) for key in kwargs)
    ):
        raise TypeError("kwargs must be an object with string keys")


def publish_options(letter: DeadLetter, queue: str | None = None) -> dict[str, Any]:
    """Routing and headers of the original message, for a new task id and no ETA/expiry."""
    stored = letter.options or {}
    headers = dict(stored.get("headers") or {})
    headers[REPLAY_HEADER] = str(letter.pk)
    options: dict[str, Any] = {"headers": headers, "retries": 0, "add_to_parent": False}
    target = queue or stored.get("queue") or letter.queue
    if target:
        options["queue"] = target
    elif stored.get("routing_key"):
        options["exchange"] = stored.get("exchange") or ""
        options["routing_key"] = stored["routing_key"]
    for key in ("priority", "root_id", "parent_id", "group_id", "shadow", "ignore_result"):
        if stored.get(key) is not None:
            options[key] = stored[key]
    for key in ("time_limit", "soft_time_limit"):
        options[key] = stored.get(key)
    return options


def _publish_or_compensate(
    app: Celery | None,
    replays: list[Replay],
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    queue: str | None,
) -> None:
    app = app or celery_app()
    published = 0
    try:
        with app.producer_or_acquire() as producer:
            for replay_row in replays:
                letter = replay_row.dead_letter
                app.send_task(
                    letter.task_name,
                    args=letter.args if args is None else args,
                    kwargs=letter.kwargs if kwargs is None else kwargs,
                    task_id=replay_row.new_task_id,
                    producer=producer,
                    **publish_options(letter, queue),
                )
                published += 1
    except Exception as error:
        _compensate(replays[published:])
        logger.error("replay publish failed after %d of %d: %r", published, len(replays), error)
        raise ReplayError(
            f"could not publish {len(replays) - published} of {len(replays)} replays: {error}",
            published=published,
            unpublished=len(replays) - published,
        ) from error


def _compensate(unpublished: list[Replay]) -> None:
    """Undo the claim of rows whose message was not published."""
    task_ids = [replay_row.new_task_id for replay_row in unpublished]
    letter_ids = [replay_row.dead_letter_id for replay_row in unpublished]
    with transaction.atomic():
        Replay.objects.filter(new_task_id__in=task_ids).delete()
        DeadLetter.objects.filter(pk__in=letter_ids, status=Status.REPLAYED).update(
            status=Status.PENDING, updated_at=timezone.now()
        )
