"""How two events of one task id combine: the rules the batch merge and the upsert share.

Events of one task id come from two processes (``task_received`` and ``task_revoked`` in
the worker's main process, the rest in the pool child) and reach the database in any
order. Each event carries ``progress = retries * 100 + state rank``: the state of the
higher progress wins, and the other columns are filled from whichever event knows them,
by the column groups below. ``merge_events`` applies them in memory; ``runs.sql`` writes
the same rules as SQL for the upsert.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Event = dict[str, Any]

# Column groups, by how two events of one task id combine.
IDENTITY = (
    "task_name",
    "queue",
    "worker_hostname",
    "periodic_task_name",
    "root_id",
    "parent_id",
    "tenant",
    "args_digest",
    "args",
    "kwargs",
    "started_at",
)
"""Known by several events: the later event's value, unless it has none."""
EARLIEST = ("received_at",)
"""The first receipt of the task id (attempts after a retry are received again)."""
PER_ATTEMPT = ("finished_at", "runtime", "exception_class", "exception_message")
"""Describe one attempt: a later attempt replaces them, even with nothing."""
HIGHEST = ("progress", "retries")
COLUMNS = ("task_id", "state", *HIGHEST, *IDENTITY, *EARLIEST, *PER_ATTEMPT)
TEXT_COLUMNS = frozenset(
    (*IDENTITY[:8], "exception_class", "exception_message", "task_id", "state")
)


def empty(column: str) -> Any:
    return "" if column in TEXT_COLUMNS else None


def _known(value: Any) -> bool:
    return value is not None and value != ""


def merge_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> Event:
    """Combine two events of one task id by the same rules as the database upsert."""
    same_attempt = (new.get("retries") or 0) == (old.get("retries") or 0)
    if same_attempt and new.get("progress", 0) >= old.get("progress", 0):
        # The common case (started, then succeeded in one child), in C-speed dict work.
        merged = {**old, **{k: v for k, v in new.items() if v is not None and v != ""}}
        if old.get("received_at") is not None and new.get("received_at") is not None:
            merged["received_at"] = min(old["received_at"], new["received_at"])
        return merged
    return _merge_in_order(old, new)


def _merge_in_order(old: Mapping[str, Any], new: Mapping[str, Any]) -> Event:
    newer, older = (new, old) if new.get("progress", 0) >= old.get("progress", 0) else (old, new)
    merged: Event = {"task_id": new["task_id"], "state": newer["state"]}
    for column in HIGHEST:
        merged[column] = max(old.get(column) or 0, new.get(column) or 0)
    for column in IDENTITY:
        value = newer.get(column)
        merged[column] = value if _known(value) else older.get(column, empty(column))
    for column in EARLIEST:
        known = [v for v in (old.get(column), new.get(column)) if v is not None]
        merged[column] = min(known) if known else None
    new_attempt = (new.get("retries") or 0) != (old.get("retries") or 0)
    latest = new if (new.get("retries") or 0) > (old.get("retries") or 0) else old
    for column in PER_ATTEMPT:
        if new_attempt:
            merged[column] = latest.get(column, empty(column))
        else:
            value = newer.get(column)
            merged[column] = value if _known(value) else older.get(column, empty(column))
    return merged
