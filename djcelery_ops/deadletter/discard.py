"""Discarding dead letters (recorded, each at most once) and purging old ones."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import QuerySet

from djcelery_ops.conf import ops_settings
from djcelery_ops.db import delete_in_batches
from djcelery_ops.deadletter.models import DeadLetter, Discard
from djcelery_ops.deadletter.selection import id_batches
from djcelery_ops.deadletter.transitions import Outcome, Progress, actor_of, claim, count_skipped
from djcelery_ops.signals import dead_letters_discarded

if TYPE_CHECKING:
    from djcelery_ops.deadletter.transitions import Actor

Status = DeadLetter.Status


def discard(
    dead_letters: QuerySet[DeadLetter] | Iterable[DeadLetter | int],
    *,
    by: Actor,
    reason: str,
    batch_size: int | None = None,
    progress: Progress | None = None,
    keep_ids: bool = True,
) -> Outcome:
    """Mark pending dead letters discarded (each at most once) and record who and why.

    A queryset is read in keyset batches (``selection.id_batches``), each committed on its
    own; ``progress`` is called after each; ``keep_ids=False`` keeps memory to one batch.
    """
    if not reason.strip():
        raise ValueError("a reason is required")
    user, by_text = actor_of(by)
    outcome = Outcome(run_id=uuid.uuid4().hex, keep_ids=keep_ids)
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    for chunk in id_batches(dead_letters, size):
        with transaction.atomic():
            claimed = claim(chunk, Status.DISCARDED, allow_truncated=True)
            count_skipped(outcome, chunk, claimed, True)
            rows = [
                Discard(dead_letter_id=pk, user=user, by=by_text, reason=reason) for pk in claimed
            ]
            Discard.objects.bulk_create(rows)
        names = DeadLetter.objects.filter(pk__in=claimed).values_list("task_name", flat=True)
        outcome.per_task.update(names)
        outcome.done += len(claimed)
        outcome.add_ids(claimed)
        if progress is not None:
            progress(outcome, claimed)
    skipped = sum(outcome.skipped.values())
    dead_letters_discarded.send_robust(discard, discarded=outcome.done, skipped=skipped)
    return outcome


PURGEABLE = (Status.RESOLVED, Status.DISCARDED, Status.REPLAYED)


def purgeable(*, before: Any, statuses: Sequence[str]) -> QuerySet[DeadLetter]:
    """Dead letters in ``statuses`` (all purgeable) last changed before ``before``."""
    bad = sorted(set(statuses) - set(PURGEABLE))
    if bad or not statuses:
        raise ValueError(f"cannot purge status {', '.join(bad) or '(none)'}")
    return DeadLetter.objects.filter(status__in=statuses, updated_at__lt=before)


def purge(
    *, before: Any, statuses: Sequence[str], batch_size: int | None = None, dry_run: bool = False
) -> int:
    """Delete dead letters in ``statuses`` last changed before ``before``, in batches."""
    rows = purgeable(before=before, statuses=statuses)
    if dry_run:
        return rows.count()
    size = batch_size or ops_settings.DEAD_LETTER_PURGE_BATCH_SIZE
    # Each batch re-applies the filters: a row replayed meanwhile is no longer purgeable.
    counts = delete_in_batches(rows, size)
    return max(counts, default=0)
