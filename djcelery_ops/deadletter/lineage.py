"""Outcome of replays, seen in the worker: success resolves, a final failure links back.

A replayed message carries ``REPLAY_HEADER`` (the id of the dead letter it replays). The
receivers look for it first, so tasks that are not replays cost one attribute lookup.
The ``Replay`` row is found by the new task id, which the replay stored before publishing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.db import DatabaseError, InterfaceError, transaction
from django.utils import timezone

from djcelery_ops.deadletter.models import DeadLetter, Replay
from djcelery_ops.wire import REPLAY_HEADER

MAX_LINEAGE_DEPTH = 50

logger = logging.getLogger("djcelery_ops.deadletter")


def record_replay_success(request: Any) -> None:
    """The replayed task of ``request`` succeeded, so its dead letter is resolved."""
    try:
        resolve_replay(str(request.id))
    except (DatabaseError, InterfaceError) as error:
        # The task did succeed; only the bookkeeping is late. The replay stays pending.
        logger.warning("could not record success of replay %s: %s", request.id, error)


def resolve_replay(task_id: str) -> bool:
    """Mark the replay succeeded and resolve its dead letter and the ones it descends from."""
    with transaction.atomic():
        replay = Replay.objects.filter(new_task_id=task_id).first()
        if replay is None:
            return False
        Replay.objects.filter(pk=replay.pk).update(
            outcome=Replay.Outcome.SUCCEEDED, finished_at=timezone.now()
        )
        letters = _lineage_of(replay.dead_letter_id)
        DeadLetter.objects.filter(pk__in=letters, status=DeadLetter.Status.REPLAYED).update(
            status=DeadLetter.Status.RESOLVED, updated_at=timezone.now()
        )
    return True


def _lineage_of(dead_letter_id: int) -> list[int]:
    """The dead letter and its ancestors: each failed replay's letter, up the chain."""
    ids = [dead_letter_id]
    for _depth in range(MAX_LINEAGE_DEPTH):
        parent = (
            DeadLetter.objects.filter(pk=ids[-1], replay_of__isnull=False)
            .values_list("replay_of__dead_letter_id", flat=True)
            .first()
        )
        if parent is None or parent in ids:
            break
        ids.append(parent)
    return ids


def is_replay(headers: Mapping[str, Any] | None) -> bool:
    """Whether a message's headers say it was published by a replay."""
    if not headers:
        return False
    return headers.get(REPLAY_HEADER) is not None


def failed_replay(task_id: str, headers: Mapping[str, Any] | None) -> Replay | None:
    """The replay a final failure comes from (marked failed), or None for a first failure.

    Called by ``write_record`` in the same transaction that writes the new dead letter.
    """
    if not is_replay(headers):
        return None
    replay = Replay.objects.filter(new_task_id=task_id).first()
    if replay is not None:
        replay.outcome, replay.finished_at = Replay.Outcome.FAILED, timezone.now()
        replay.save(update_fields=["outcome", "finished_at"])
    return replay
