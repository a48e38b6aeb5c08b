"""The batched writer of job runs.

Signal receivers hand events (plain dicts) to the process's ``recorder``; it merges events
of one task id in memory and a background thread upserts them every
``DJCELERY_OPS_RUNS_FLUSH_INTERVAL`` seconds or ``DJCELERY_OPS_RUNS_BATCH_SIZE`` task ids,
on its own long-lived database connection (Django connections are per thread, so Celery's
Django fixup, which closes the task thread's connection around every task, leaves it open).

Events of one task id come from two processes (``task_received`` and ``task_revoked`` in
the worker's main process, the rest in the pool child) and their batches reach the
database in any order. A receipt is *held* (``hold()``): it is written only if its task
is still waiting a whole flush interval later (prefetched behind busy children, or
waiting for its ETA). A task that starts at once is written by the child alone, one row
insert instead of an insert and an update. Each event carries ``progress = retries * 100 +
state rank``; the upsert keeps the state of the higher progress and fills the other
columns from whichever event knows them. The same rules merge events in memory before the write.

Losing the last unflushed batch when a process is SIGKILLed is accepted: this is
telemetry. Dead letters are stored by their own synchronous code path, never here.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Field

from djcelery_ops.conf import ops_settings

logger = logging.getLogger("djcelery_ops.runs")

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
MAX_PENDING_FACTOR = 20  # keep at most this many batches when the database is away


def _empty(column: str) -> Any:
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
        merged[column] = value if _known(value) else older.get(column, _empty(column))
    for column in EARLIEST:
        known = [v for v in (old.get(column), new.get(column)) if v is not None]
        merged[column] = min(known) if known else None
    new_attempt = (new.get("retries") or 0) != (old.get("retries") or 0)
    latest = new if (new.get("retries") or 0) > (old.get("retries") or 0) else old
    for column in PER_ATTEMPT:
        if new_attempt:
            merged[column] = latest.get(column, _empty(column))
        else:
            value = newer.get(column)
            merged[column] = value if _known(value) else older.get(column, _empty(column))
    return merged


def _upsert_assignments(table: str, quote: Any) -> str:
    t = quote(table)

    def pick(column: str, condition: str) -> str:
        c = quote(column)
        e_val, t_val = f"excluded.{c}", f"{t}.{c}"
        if column in TEXT_COLUMNS:
            e_val, t_val = f"NULLIF({e_val}, '')", f"NULLIF({t_val}, '')"
        return (
            f"CASE WHEN {condition} THEN COALESCE({e_val}, {t}.{c}) "
            f"ELSE COALESCE({t_val}, excluded.{c}) END"
        )

    newer = f"excluded.{quote('progress')} >= {t}.{quote('progress')}"
    sets = {
        "state": f"CASE WHEN {newer} THEN excluded.{quote('state')} ELSE {t}.{quote('state')} END"
    }
    for column in HIGHEST:
        c = quote(column)
        sets[column] = f"CASE WHEN excluded.{c} > {t}.{c} THEN excluded.{c} ELSE {t}.{c} END"
    for column in IDENTITY:
        sets[column] = pick(column, newer)
    for column in EARLIEST:
        c = quote(column)
        sets[column] = (
            f"CASE WHEN {t}.{c} IS NULL THEN excluded.{c} WHEN excluded.{c} IS NULL THEN {t}.{c} "
            f"WHEN excluded.{c} < {t}.{c} THEN excluded.{c} ELSE {t}.{c} END"
        )
    retries = quote("retries")
    for column in PER_ATTEMPT:
        c = quote(column)
        sets[column] = (
            f"CASE WHEN excluded.{retries} > {t}.{retries} THEN excluded.{c} "
            f"WHEN excluded.{retries} < {t}.{retries} THEN {t}.{c} ELSE {pick(column, newer)} END"
        )
    return ", ".join(f"{quote(column)} = {expression}" for column, expression in sets.items())


def _concrete(field: Any) -> Field[Any, Any]:
    assert isinstance(field, Field)
    return field


def write_runs(events: Iterable[Mapping[str, Any]], using: str = "default") -> int:
    """Upsert events (at most one per task id); returns how many rows were written."""
    rows = sorted(events, key=lambda event: event["task_id"])  # one lock order: no deadlock
    if not rows:
        return 0
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _write_with_unnest(cursor, connection, rows)
        else:
            _write_with_values(cursor, connection, rows)
    return len(rows)


def _fields() -> list[Field[Any, Any]]:
    from djcelery_ops.runs.models import TaskRun

    return [_concrete(TaskRun._meta.get_field(column)) for column in COLUMNS]


def _column(field: Field[Any, Any], rows: list[Mapping[str, Any]]) -> list[Any]:
    """One column of the rows: missing values as the column's empty value, text cut to
    the column's length."""
    name, default, limit = field.name, _empty(field.name), field.max_length
    values = [row.get(name, default) for row in rows]
    if limit:
        values = [v[:limit] if isinstance(v, str) and len(v) > limit else v for v in values]
    return values


def _head(connection: Any) -> tuple[str, str]:
    from djcelery_ops.runs.models import TaskRun

    quote, table = connection.ops.quote_name, TaskRun._meta.db_table
    head = f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in COLUMNS)}) "
    tail = f" ON CONFLICT ({quote('task_id')}) DO UPDATE SET {_upsert_assignments(table, quote)}"
    return head, tail


def _write_with_unnest(cursor: Any, connection: Any, rows: list[Mapping[str, Any]]) -> None:
    """PostgreSQL: one array per column, so the statement text never changes and the
    values travel as 20 arrays instead of 20 parameters per row.

    Django's psycopg 3 cursor binds on the client: it would quote every array element into
    the SQL text in Python (half the writer's CPU). The arrays go as real parameters of a
    server-bound psycopg cursor on the same connection (and transaction) instead."""
    fields = _fields()
    arrays = []
    for field in fields:
        values = _column(field, rows)
        if field.get_internal_type() == "JSONField":
            encoder = getattr(field, "encoder", None)
            values = [None if v is None else json.dumps(v, cls=encoder) for v in values]
        arrays.append(values)
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    # %b: psycopg 3 sends the arrays in binary, nothing is quoted or parsed as text.
    placeholder = "%b" if is_psycopg3 else "%s"
    casts = ", ".join(f"{placeholder}::{_array_type(field, connection)}[]" for field in fields)
    head, tail = _head(connection)
    sql = f"{head}SELECT * FROM unnest({casts}){tail}"
    if not is_psycopg3:
        cursor.execute(sql, arrays)
        return
    import psycopg

    # Django's own wrapper around it: error translation (DataError...), execute_wrapper()
    # hooks and query logging work as for any other query.
    wrapper = CursorDebugWrapper if connection.queries_logged else CursorWrapper
    with wrapper(psycopg.Cursor(connection.connection), connection) as server_bound:
        server_bound.execute(sql, arrays)


PG_ARRAY_TYPES = {
    "CharField": "text",
    "TextField": "text",
    "JSONField": "jsonb",
    "DateTimeField": "timestamptz",
    "FloatField": "float8",
    "PositiveIntegerField": "integer",
}


def _array_type(field: Field[Any, Any], connection: Any) -> str:
    return PG_ARRAY_TYPES[field.get_internal_type()]


def _write_with_values(cursor: Any, connection: Any, rows: list[Mapping[str, Any]]) -> None:
    fields = _fields()
    head, tail = _head(connection)
    placeholder = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    for start in range(0, len(rows), 500):  # SQLite allows 32766 parameters a statement
        chunk = rows[start : start + 500]
        columns = [_column(field, chunk) for field in fields]
        params = [
            field.get_db_prep_save(value, connection)
            for row in zip(*columns, strict=True)
            for field, value in zip(fields, row, strict=True)
        ]
        values = ", ".join([placeholder] * len(chunk))
        cursor.execute(f"{head}VALUES {values}{tail}", params)


class RunRecorder:
    """Per-process buffer of run events and the thread that writes them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also called in a forked child: the parent's thread, locks and rows are not ours.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[str, Event] = {}
        self._held: dict[str, tuple[float, Event, Callable[[str], bool]]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held(self) -> int:
        return len(self._held)

    def add(self, event: Event) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._merge(event)
            size = len(self._pending)
        if self._thread is None:
            self._start()
        if size >= ops_settings.RUNS_BATCH_SIZE:
            self._wake.set()

    def hold(self, event: Event, waiting: Callable[[str], bool]) -> None:
        """Keep ``event`` back; write it only if ``waiting(task_id)`` still holds at the
        first flush at least one flush interval later (or at close). Otherwise the task
        has moved on and the process that runs it records it: the event is dropped."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._held[event["task_id"]] = (time.monotonic(), event, waiting)
        if self._thread is None:
            self._start()

    def _merge(self, event: Event) -> None:
        # Called with self._lock held.
        old = self._pending.get(event["task_id"])
        self._pending[event["task_id"]] = event if old is None else merge_events(old, event)

    def _release_held(self, everything: bool = False) -> None:
        """Move held events that are due into the pending batch (``self._lock`` held)."""
        if not self._held:
            return
        due_before = time.monotonic() - ops_settings.RUNS_FLUSH_INTERVAL
        for task_id, (held_at, event, waiting) in list(self._held.items()):
            if not waiting(task_id):
                del self._held[task_id]
            elif everything or held_at <= due_before:
                del self._held[task_id]
                self._merge(event)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="djcelery_ops-runs-writer", daemon=True
            )
        self._thread.start()
        atexit.register(self.close)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(ops_settings.RUNS_FLUSH_INTERVAL)
                self._wake.clear()
                self.flush()
        finally:
            connections.close_all()

    def flush(self, everything: bool = False) -> int:
        """Write what is pending now; on a database error keep it for the next flush.

        Held events are written when due (``everything``: all that still wait)."""
        with self._write_lock:
            with self._lock:
                self._release_held(everything)
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                return write_runs(batch.values())
            except (DataError, IntegrityError):
                # The data itself is refused (a NUL byte in an exception message, say):
                # retrying would block every later batch. Write the rows one by one and
                # drop only those refused.
                return self._write_one_by_one(batch)
            except (DatabaseError, InterfaceError) as error:
                self._keep(batch)
                logger.warning("job runs not recorded yet (%s); %d kept", error, len(batch))
            connections["default"].close()
            return 0

    def _write_one_by_one(self, batch: dict[str, Event]) -> int:
        written = 0
        for task_id, event in batch.items():
            try:
                written += write_runs([event])
            except (DataError, IntegrityError) as error:
                logger.warning("job-run event of %s dropped: %s", task_id, error)
        return written

    def _keep(self, batch: dict[str, Event]) -> None:
        with self._lock:
            if len(self._pending) + len(batch) > MAX_PENDING_FACTOR * ops_settings.RUNS_BATCH_SIZE:
                logger.warning("dropping %d job-run events: database away too long", len(batch))
                return
            for task_id, event in batch.items():
                newer = self._pending.get(task_id)
                self._pending[task_id] = event if newer is None else merge_events(event, newer)

    def close(self) -> None:
        """Stop the writer thread and write the rest (worker and process shutdown, atexit)."""
        if self._pid != os.getpid():
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._stop.set()
            self._wake.set()
            thread.join(timeout=10)
        self.flush(everything=True)


recorder = RunRecorder()
os.register_at_fork(after_in_child=recorder._reset)
