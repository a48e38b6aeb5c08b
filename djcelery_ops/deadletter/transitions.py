"""Moving pending dead letters to another status, each row at most once.

``claim`` is one conditional ``UPDATE ... WHERE status = 'pending' RETURNING id``: only
the rows this statement changed are acted on, so two operators or two commands replaying
or discarding the same rows at once act on each row once. Replay and discard share it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.utils import timezone

from djcelery_ops.db import any_of
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.deadletter.selection import SKIP_NOT_FOUND, skip_reason

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    Actor = AbstractBaseUser | str

Status = DeadLetter.Status


@dataclasses.dataclass
class Outcome:
    """What a replay or discard did: rows changed, per task, and rows skipped and why.

    ``keep_ids`` False: the lists of ids stay empty, so a run over 500,000 rows holds one
    batch in memory (the caller learns each batch's ids through ``progress``).
    """

    run_id: str
    done: int = 0  # rows claimed (replay: committed to the outbox)
    published: int = 0  # replays the broker confirmed
    per_task: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    dead_letter_ids: list[int] = dataclasses.field(default_factory=list)
    new_task_ids: list[str] = dataclasses.field(default_factory=list)
    keep_ids: bool = True

    def add_ids(self, dead_letter_ids: Iterable[int], new_task_ids: Iterable[str] = ()) -> None:
        if self.keep_ids:
            self.dead_letter_ids.extend(dead_letter_ids)
            self.new_task_ids.extend(new_task_ids)


Progress = Callable[[Outcome, list[int]], None]
"""Called after each committed batch with the outcome so far and that batch's claimed ids."""


def actor_of(by: Actor) -> tuple[Any, str]:
    if isinstance(by, str):
        return None, by[:255]
    return by, str(by.get_username())[:255]


def claim(ids: list[int], status: str, *, allow_truncated: bool) -> list[int]:
    """Move pending rows to ``status``; return the ids this statement changed."""
    return [row[0] for row in claim_rows(ids, status, allow_truncated=allow_truncated)]


def claim_rows(
    ids: list[int], status: str, *, allow_truncated: bool, columns: Sequence[str] = ("id",)
) -> list[tuple[Any, ...]]:
    """Move pending rows to ``status``; return ``columns`` (the first is ``id``) of the
    rows this statement changed, in id order: the claim reads what the caller needs."""
    assert columns[0] == "id", "rows are returned in id order"
    quote = connection.ops.quote_name
    table = quote(DeadLetter._meta.db_table)
    listed = any_of(ids, "bigint")
    # A row whose call was not kept faithfully is replayed only with the operator's call.
    truncated = "" if allow_truncated else " AND replay_blocker = %s"
    params: list[Any] = [status, timezone.now(), *listed.params, Status.PENDING]
    if not allow_truncated:
        params.append("")
    where = f"id {listed.text} AND status = %s{truncated}"
    returning = ", ".join(quote(column) for column in columns)
    sql = f"UPDATE {table} SET status = %s, updated_at = %s WHERE {where} RETURNING {returning}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(cursor.fetchall(), key=lambda row: row[0])


def count_skipped(outcome: Outcome, ids: list[int], claimed: list[int], editable: bool) -> None:
    missed = sorted(set(ids) - set(claimed))
    if not missed:
        return
    found = list(DeadLetter.objects.filter(pk__in=missed).values_list("status", "replay_blocker"))
    for status, truncated in found:
        outcome.skipped[skip_reason(status, truncated, editable=editable) or "changed"] += 1
    if len(found) < len(missed):
        outcome.skipped[SKIP_NOT_FOUND] += len(missed) - len(found)
