"""Writing job-run events: one upsert per batch, for PostgreSQL and for SQLite.

PostgreSQL gets one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT (task_id) DO
UPDATE`` whose arrays travel as binary parameters; SQLite gets ``VALUES`` lists of 500 rows.
The ``DO UPDATE`` clause is the SQL form of ``runs.merge``'s rules. This is the one upsert
in the app not built by ``djcelery_ops.db.upsert``: it writes thousands of rows a
statement, and its cost per row is what the job-run benchmark measures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db import connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Field

from djcelery_ops.runs.merge import (
    COLUMNS,
    EARLIEST,
    HIGHEST,
    IDENTITY,
    PER_ATTEMPT,
    TEXT_COLUMNS,
    empty,
)


def merge_assignments(table: str, using: str = "default") -> str:
    """The ``DO UPDATE SET`` list of the upsert: ``runs.merge``'s rules in SQL."""
    return _upsert_assignments(table, connections[using].ops.quote_name)


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
    name, default, limit = field.name, empty(field.name), field.max_length
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


def _partitioned_sql(connection: Any, rows_sql: str) -> str:
    """The upsert into daily partitions (``runs.partitions``): each row goes to the day
    its task id already has in the last lookback days, or to today; the conflict is on
    ``(task_id, recorded_on)``, so the ``DO UPDATE`` is the same merge."""
    from djcelery_ops.conf import ops_settings
    from djcelery_ops.runs.models import TaskRun
    from djcelery_ops.runs.partitions import KEY, TODAY

    quote, table = connection.ops.quote_name, TaskRun._meta.db_table
    t, key = quote(table), quote(KEY)
    back = int(ops_settings.RUNS_PARTITION_LOOKBACK_DAYS)
    names = ", ".join(quote(c) for c in COLUMNS)
    # A first attempt's event that carries its receipt time (a task that ran at once: the
    # common case) can only have a row from that day on, less a day for clock skew and a
    # redelivery: it probes two partitions, not all the lookback's (run-time pruning).
    received, retries = f"u.{quote('received_at')}", f"u.{quote('retries')}"
    since = (
        f"CASE WHEN {retries} = 0 AND {received} IS NOT NULL THEN GREATEST({TODAY} - {back}, "
        f"({received} AT TIME ZONE 'UTC')::date - 1) ELSE {TODAY} - {back} END"
    )
    day = (
        f"COALESCE((SELECT r.{key} FROM {t} r WHERE r.{quote('task_id')} = u.{quote('task_id')} "
        f"AND r.{key} BETWEEN {since} AND {TODAY} LIMIT 1), {TODAY})"
    )
    return (
        f"INSERT INTO {t} ({names}, {key}) SELECT u.*, {day} FROM {rows_sql} AS u({names}) "
        f"ON CONFLICT ({quote('task_id')}, {key}) DO UPDATE SET "
        f"{_upsert_assignments(table, quote)}"
    )


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
    from djcelery_ops.runs.partitions import is_partitioned

    if is_partitioned(connection):
        sql = _partitioned_sql(connection, f"unnest({casts})")
        _into_todays_partition(lambda: _execute(cursor, connection, sql, arrays), connection)
        return
    head, tail = _head(connection)
    _execute(cursor, connection, f"{head}SELECT * FROM unnest({casts}){tail}", arrays)


def _execute(cursor: Any, connection: Any, sql: str, arrays: list[Any]) -> None:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        cursor.execute(sql, arrays)
        return
    import psycopg

    # Django's own wrapper around it: error translation (DataError...), execute_wrapper()
    # hooks and query logging work as for any other query.
    wrapper = CursorDebugWrapper if connection.queries_logged else CursorWrapper
    with wrapper(psycopg.Cursor(connection.connection), connection) as server_bound:
        server_bound.execute(sql, arrays)


def _into_todays_partition(write: Callable[[], None], connection: Any) -> None:
    """Write; if today has no partition yet (``partition_task_runs`` not run), create it
    and write again, rather than lose the batch."""
    from django.db import IntegrityError, transaction

    from djcelery_ops.runs import partitions

    try:
        with transaction.atomic(using=connection.alias):
            write()
    except IntegrityError as error:
        if "no partition of relation" not in str(error):
            raise
        day = partitions.today()
        partitions.create_partitions(day, day)
        write()


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
