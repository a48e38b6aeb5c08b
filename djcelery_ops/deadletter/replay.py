"""Replay, discard and purge of dead letters: the service the admin and the commands call.

How a replay stays safe:

1. Claim: in one transaction, ``UPDATE ... SET status='replayed' WHERE id IN (...) AND
   status='pending' RETURNING id``. Only the rows this statement changed are replayed, so
   two operators or two commands replaying the same rows at once publish each row once.
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

import dataclasses
import datetime
import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from celery import current_app
from django.db import connection, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.models import DeadLetter, Discard, Replay
from djcelery_ops.deadletter.record import REPLAY_HEADER
from djcelery_ops.ops.retention import delete_in_batches

if TYPE_CHECKING:
    from celery import Celery
    from django.contrib.auth.models import AbstractBaseUser

    Actor = AbstractBaseUser | str

logger = logging.getLogger("djcelery_ops.deadletter")

Status = DeadLetter.Status

SKIP_NOT_FOUND = "not found"
SKIP_TRUNCATED = "payload truncated"


class ReplayError(Exception):
    """A replay could not be published; the rows not published stay pending."""

    def __init__(self, message: str, *, published: int, unpublished: int) -> None:
        super().__init__(message)
        self.published = published
        self.unpublished = unpublished


@dataclasses.dataclass
class Outcome:
    """What a replay or discard did: rows changed, per task, and rows skipped and why."""

    run_id: str
    done: int = 0
    per_task: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    dead_letter_ids: list[int] = dataclasses.field(default_factory=list)
    new_task_ids: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
    """What a replay or discard of a selection would do, for confirmation and dry runs."""

    total: int
    per_task: list[tuple[str, int]]
    skipped: list[tuple[str, int]]

    @property
    def applicable(self) -> int:
        return sum(count for _task, count in self.per_task)


def _actor(by: Actor) -> tuple[Any, str]:
    if isinstance(by, str):
        return None, by[:255]
    return by, str(by.get_username())[:255]


def _chunks(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _ids(dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int]) -> list[int]:
    if isinstance(dead_letters, QuerySet):
        if not dead_letters.query.is_sliced:
            dead_letters = dead_letters.order_by("pk")
        return sorted(dead_letters.values_list("pk", flat=True))
    ids = {letter if isinstance(letter, int) else letter.pk for letter in dead_letters}
    return sorted(ids)


def skip_reason(status: str, truncated: bool, *, editable: bool = False) -> str | None:
    """Why a row cannot be replayed, or None when it can."""
    if status != Status.PENDING:
        return f"already {status}"
    if truncated and not editable:
        return SKIP_TRUNCATED
    return None


def plan(queryset: QuerySet[DeadLetter], *, action: str = "replay") -> Plan:
    """Count per task what ``replay``/``discard`` would change and what it would skip."""
    rows = queryset.order_by().values("status", "payload_truncated", "task_name")
    counts = rows.annotate(n=Count("pk")).values_list(
        "task_name", "status", "payload_truncated", "n"
    )
    per_task: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for task_name, status, truncated, n in counts:
        reason = skip_reason(status, truncated and action == "replay")
        if reason is None:
            per_task[task_name] += n
        else:
            skipped[reason] += n
    total = sum(per_task.values()) + sum(skipped.values())
    return Plan(total, sorted(per_task.items()), sorted(skipped.items()))


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which dead letters an operator means; the admin and the commands build one."""

    task: str | None = None
    failure_reason: str | None = None
    exception: str | None = None
    fingerprint: str | None = None
    queue: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    ids: tuple[int, ...] = ()
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.failure_reason is not None and self.failure_reason not in DeadLetter.Reason:
            choices = ", ".join(DeadLetter.Reason.values)
            raise ValueError(f"unknown failure reason {self.failure_reason!r} (one of {choices})")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be a positive number")
        if self.since and self.until and self.since > self.until:
            raise ValueError("since is after until")

    def queryset(self, status: str | None = Status.PENDING) -> QuerySet[DeadLetter]:
        """Matching rows, oldest id first (so an interrupted run resumes in order)."""
        rows = DeadLetter.objects.all()
        if status is not None:
            rows = rows.filter(status=status)
        exact = {
            "task_name": self.task,
            "reason": self.failure_reason,
            "exception_class": self.exception,
            "fingerprint": self.fingerprint,
            "queue": self.queue,
            "last_failed_at__gte": self.since,
            "last_failed_at__lt": self.until,
        }
        rows = rows.filter(**{key: value for key, value in exact.items() if value is not None})
        if self.ids:
            rows = rows.filter(pk__in=self.ids)
        rows = rows.order_by("pk")
        return rows[: self.limit] if self.limit else rows


def _claim(ids: list[int], status: str, *, allow_truncated: bool) -> list[int]:
    """Move pending rows to ``status``; return the ids this statement changed."""
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    marks = ", ".join(["%s"] * len(ids))
    truncated = "" if allow_truncated else " AND payload_truncated = %s"
    params: list[Any] = [status, timezone.now(), *ids, Status.PENDING]
    if not allow_truncated:
        params.append(False)
    where = f"id IN ({marks}) AND status = %s{truncated}"
    if connection.vendor in ("postgresql", "sqlite"):
        sql = f"UPDATE {table} SET status = %s, updated_at = %s WHERE {where} RETURNING id"
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return sorted(row[0] for row in cursor.fetchall())
    # Other databases: lock the rows first, then the same conditional update.
    rows = DeadLetter.objects.select_for_update().filter(pk__in=ids, status=Status.PENDING)
    if not allow_truncated:
        rows = rows.filter(payload_truncated=False)
    claimed = sorted(rows.values_list("pk", flat=True))
    DeadLetter.objects.filter(pk__in=claimed, status=Status.PENDING).update(
        status=status, updated_at=timezone.now()
    )
    return claimed


def _count_skipped(outcome: Outcome, ids: list[int], claimed: list[int], editable: bool) -> None:
    missed = sorted(set(ids) - set(claimed))
    if not missed:
        return
    found = list(
        DeadLetter.objects.filter(pk__in=missed).values_list("status", "payload_truncated")
    )
    for status, truncated in found:
        outcome.skipped[skip_reason(status, truncated, editable=editable) or "changed"] += 1
    if len(found) < len(missed):
        outcome.skipped[SKIP_NOT_FOUND] += len(missed) - len(found)


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
    user, by_text = _actor(by)
    outcome = Outcome(run_id=run_id or uuid.uuid4().hex)
    editable = args is not None and kwargs is not None
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    for chunk in _chunks(_ids(dead_letters), size):
        with transaction.atomic():
            claimed = _claim(chunk, Status.REPLAYED, allow_truncated=editable)
            _count_skipped(outcome, chunk, claimed, editable)
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


def discard(
    dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int],
    *,
    by: Actor,
    reason: str,
    batch_size: int | None = None,
) -> Outcome:
    """Mark pending dead letters discarded (each at most once) and record who and why."""
    if not reason.strip():
        raise ValueError("a reason is required")
    user, by_text = _actor(by)
    outcome = Outcome(run_id=uuid.uuid4().hex)
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    for chunk in _chunks(_ids(dead_letters), size):
        with transaction.atomic():
            claimed = _claim(chunk, Status.DISCARDED, allow_truncated=True)
            _count_skipped(outcome, chunk, claimed, True)
            rows = [
                Discard(dead_letter_id=pk, user=user, by=by_text, reason=reason) for pk in claimed
            ]
            Discard.objects.bulk_create(rows)
        names = DeadLetter.objects.filter(pk__in=claimed).values_list("task_name", flat=True)
        outcome.per_task.update(names)
        outcome.done += len(claimed)
        outcome.dead_letter_ids.extend(claimed)
    return outcome


PURGEABLE = (Status.RESOLVED, Status.DISCARDED, Status.REPLAYED)


def purge(
    *, before: Any, statuses: Sequence[str], batch_size: int | None = None, dry_run: bool = False
) -> int:
    """Delete dead letters in ``statuses`` last changed before ``before``, in batches."""
    bad = sorted(set(statuses) - set(PURGEABLE))
    if bad or not statuses:
        raise ValueError(f"cannot purge status {', '.join(bad) or '(none)'}")
    rows = DeadLetter.objects.filter(status__in=statuses, updated_at__lt=before)
    if dry_run:
        return rows.count()
    size = batch_size or ops_settings.DEAD_LETTER_PURGE_BATCH_SIZE
    # Each batch re-applies the filters: a row replayed meanwhile is no longer purgeable.
    counts = delete_in_batches(rows, size)
    return max(counts, default=0)
