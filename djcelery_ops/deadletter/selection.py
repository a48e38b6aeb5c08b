"""Which dead letters an operator means, and what replaying or discarding them would do.

The admin and the commands build a ``Selection`` (or pass a queryset or ids); ``plan``
counts per task what an action would change and what it would skip, for confirmation
pages and dry runs.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter
from collections.abc import Collection, Iterable, Iterator

from django.db.models import Count, Q, QuerySet

from djcelery_ops.deadletter.call import BLOCKED_NEVER_DECODED, BLOCKED_TRUNCATED
from djcelery_ops.deadletter.models import DeadLetter

Status = DeadLetter.Status

SKIP_NOT_FOUND = "not found"
SKIP_TRUNCATED = BLOCKED_TRUNCATED
SKIP_NOT_RAW = "not a message that was never decoded"


def skip_not_accepted(content_type: str) -> str:
    return f"content type {content_type} not accepted here"


@dataclasses.dataclass
class Plan:
    """What a replay or discard of a selection would do, for confirmation and dry runs.

    ``capped``: the selection has more rows than the ``cap`` given to ``plan``; the
    figures then describe its first ``cap`` rows only.
    """

    total: int
    per_task: list[tuple[str, int]]
    skipped: list[tuple[str, int]]
    capped: bool = False

    @property
    def applicable(self) -> int:
        return sum(count for _task, count in self.per_task)


def skip_reason(status: str, blocker: str, *, editable: bool = False) -> str | None:
    """Why a row cannot be replayed, or None when it can.

    ``blocker`` is the row's ``replay_blocker`` (why a plain replay would not be faithful);
    edit and replay (``editable``) gives the call itself, so it is not blocked by it.
    """
    if status != Status.PENDING:
        return f"already {status}"
    if blocker and not editable:
        return blocker
    return None


def plan(
    queryset: QuerySet[DeadLetter],
    *,
    action: str = "replay",
    accepted: Collection[str] | None = None,
    cap: int | None = None,
) -> Plan:
    """Count per task what ``replay``/``discard`` would change and what it would skip.

    ``accepted``: the content types the replaying app decodes (a kept call of another
    type is skipped); None does not check. ``cap``: count only the first ``cap`` rows
    (in the queryset's order), so a confirmation page of 500,000 rows stays cheap; the
    plan is then marked ``capped``.
    """
    capped = False
    if cap is not None:
        capped = queryset.values("pk")[cap : cap + 1].exists()
        if capped:
            queryset = DeadLetter.objects.filter(pk__in=queryset.values("pk")[:cap])
    elif queryset.query.is_sliced:
        # A slice (``--limit``) cannot be regrouped; count the rows it holds instead.
        ids = list(queryset.values_list("pk", flat=True))
        queryset = DeadLetter.objects.filter(pk__in=ids)
    fields = ("task_name", "status", "replay_blocker", "call_content_type")
    counts = queryset.order_by().values(*fields).annotate(n=Count("pk")).values_list(*fields, "n")
    per_task: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    replaying = action == "replay"
    for task_name, status, blocker, content_type, n in counts:
        reason = skip_reason(status, blocker if replaying else "")
        if reason is None and action == "republish" and blocker != BLOCKED_NEVER_DECODED:
            reason = SKIP_NOT_RAW
        if reason is None and replaying and content_type and accepted is not None:
            reason = None if content_type in accepted else skip_not_accepted(content_type)
        if reason is None:
            per_task[task_name] += n
        else:
            skipped[reason] += n
    total = sum(per_task.values()) + sum(skipped.values())
    return Plan(total, sorted(per_task.items()), sorted(skipped.items()), capped)


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
            "fingerprint": self.fingerprint,
            "queue": self.queue,
            "last_failed_at__gte": self.since,
            "last_failed_at__lt": self.until,
        }
        rows = rows.filter(**{key: value for key, value in exact.items() if value is not None})
        if self.exception is not None:
            rows = rows.filter(exception_matches(self.exception))
        if self.ids:
            rows = rows.filter(pk__in=self.ids)
        rows = rows.order_by("pk")
        return rows[: self.limit] if self.limit else rows


def exception_matches(name: str) -> Q:
    """``builtins.KeyError`` or just ``KeyError``: the stored name is the dotted one."""
    return Q(exception_class=name) | Q(exception_class__endswith=f".{name}")


class IdCursor:
    """The ids of a selection, ``take(n)`` at a time, in id order, by keyset.

    Each ``take`` is ``... WHERE id > <last> ORDER BY id LIMIT n`` with the selection's
    filters: memory holds one batch, however many rows match, and a row that stopped
    matching meanwhile (replayed by someone else) is not taken. A list of rows or ids, or
    a sliced queryset (``--limit``, bounded by the operator), is read whole instead.
    """

    def __init__(self, dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int]) -> None:
        self.rows: QuerySet[DeadLetter] | None = None
        self.fixed: list[int] = []
        self.position = 0
        if isinstance(dead_letters, QuerySet) and not dead_letters.query.is_sliced:
            self.rows = dead_letters.order_by("pk")
        else:
            self.fixed = selected_ids(dead_letters)
        self.last: int | None = None

    def take(self, size: int) -> list[int]:
        if self.rows is None:
            batch = self.fixed[self.position : self.position + size]
            self.position += len(batch)
            return batch
        rows = self.rows if self.last is None else self.rows.filter(pk__gt=self.last)
        batch = list(rows.values_list("pk", flat=True)[:size])
        if batch:
            self.last = batch[-1]
        return batch


def id_batches(
    dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int], size: int
) -> Iterator[list[int]]:
    """The selection's ids in batches of ``size`` (``IdCursor``: bounded memory)."""
    cursor = IdCursor(dead_letters)
    while batch := cursor.take(size):
        yield batch


def selected_ids(dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int]) -> list[int]:
    if isinstance(dead_letters, QuerySet):
        if not dead_letters.query.is_sliced:
            dead_letters = dead_letters.order_by("pk")
        return sorted(dead_letters.values_list("pk", flat=True))
    ids = {letter if isinstance(letter, int) else letter.pk for letter in dead_letters}
    return sorted(ids)
