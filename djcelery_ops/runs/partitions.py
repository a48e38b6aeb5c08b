"""Opt-in daily partitions of the job-run table (PostgreSQL only).

A partitioned table's unique constraints must contain its partition key, so ``task_id``
cannot stay unique on its own, and the recorder's ``ON CONFLICT (task_id)`` has no
constraint to infer. The partition key is therefore a column the ORM never sees,
``recorded_on``: the UTC day the row was first written (its default), never changed by an
update, so no upsert moves a row between partitions. The unique constraint becomes
``(task_id, recorded_on)``, the primary key ``(id, recorded_on)``, and the recorder writes
each event with the ``recorded_on`` of the row its task id already has in the partitions of
the last ``DJCELERY_OPS_RUNS_PARTITION_LOOKBACK_DAYS`` days, or today for a new task id
(``runs.sql``). Old partitions are never read by a write, so the write costs the same with
a billion old rows as with none.

``convert`` swaps the table in one short transaction (no rows are copied: the old table is
renamed ``<table>_unpartitioned``); ``copy_unpartitioned`` then moves its rows across in
batches, merging each into a row of the same task id written since. ``create_partitions``
creates the coming days' partitions and must run daily (``partition_task_runs``).
``purge_task_runs`` drops whole partitions (``drop_partition``) and deletes in batches only
where a partition still holds a run that must stay.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Iterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from djcelery_ops.db import BatchedDelete
from djcelery_ops.runs.models import TaskRun

KEY = "recorded_on"
TODAY = "(now() AT TIME ZONE 'UTC')::date"
UNPARTITIONED_SUFFIX = "_unpartitioned"
# A drop waits at most this long for its lock: a queued ACCESS EXCLUSIVE request would
# block every writer behind it.
LOCK_TIMEOUT = "1s"


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table() -> str:
    return TaskRun._meta.db_table


def is_partitioned(using: Any = None) -> bool:
    """Whether the job-run table is partitioned, read from the catalog once per connection.

    Cached on the database connection object: a new connection (after a conversion the
    recorder's write fails, and its writer reconnects) reads it again.
    """
    conn = using or connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql":
        return False
    conn.ensure_connection()
    cached = getattr(conn, "_djops_runs_partitioned", None)
    if cached is not None and cached[0] is conn.connection:
        return bool(cached[1])
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
            [conn.ops.quote_name(TaskRun._meta.db_table)],
        )
        row = cursor.fetchone()
    partitioned = bool(row and row[0])
    conn.__dict__["_djops_runs_partitioned"] = (conn.connection, partitioned)
    return partitioned


def forget_layout(using: Any = None) -> None:
    """Read the table's layout again at the next write (after converting it)."""
    conn = using or connections[DEFAULT_DB_ALIAS]
    conn.__dict__.pop("_djops_runs_partitioned", None)


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    start: datetime.date
    end: datetime.date  # exclusive


def partition_name(day: datetime.date) -> str:
    return f"{table()}_p{day:%Y%m%d}"


def partitions() -> list[Partition]:
    """The table's day partitions, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [_quote(table())],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        # FOR VALUES FROM ('2026-11-24') TO ('2026-11-25')
        start, end = (datetime.date.fromisoformat(part) for part in bound.split("'")[1::2][:2])
        found.append(Partition(name, start, end))
    return sorted(found, key=lambda p: p.start)


def today() -> datetime.date:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {TODAY}")
        day: datetime.date = cursor.fetchone()[0]
    return day


def create_partition_sql(day: datetime.date) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {_quote(partition_name(day))} PARTITION OF "
        f"{_quote(table())} FOR VALUES FROM ('{day:%Y-%m-%d}') TO "
        f"('{day + datetime.timedelta(days=1):%Y-%m-%d}')"
    )


def days(first: datetime.date, last: datetime.date) -> Iterator[datetime.date]:
    day = first
    while day <= last:
        yield day
        day += datetime.timedelta(days=1)


def missing_days(first: datetime.date, last: datetime.date) -> list[datetime.date]:
    have = {p.start for p in partitions()}
    return [day for day in days(first, last) if day not in have]


def create_partitions(first: datetime.date, last: datetime.date) -> list[str]:
    """Create the missing day partitions from ``first`` to ``last``; returns their names."""
    created = []
    for day in missing_days(first, last):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(create_partition_sql(day))
        created.append(partition_name(day))
    return created


def convert_sql(first: datetime.date, last: datetime.date) -> list[str]:
    """The statements that swap the plain table for a partitioned one, in order.

    Run in one transaction: they take an ACCESS EXCLUSIVE lock on the table for as long as
    catalog changes take (milliseconds), whatever the table's size: no row is copied.
    """
    t, old = table(), table() + UNPARTITIONED_SUFFIX
    statements = [f"LOCK TABLE {_quote(t)} IN ACCESS EXCLUSIVE MODE"]
    statements.append(f"ALTER TABLE {_quote(t)} RENAME TO {_quote(old)}")
    # Index and constraint names are unique in a schema: the new table takes the model's.
    for kind, name in _indexes_and_constraints(t):
        renamed = _quote(name[:50] + UNPARTITIONED_SUFFIX)
        if kind == "constraint":
            statements.append(
                f"ALTER TABLE {_quote(old)} RENAME CONSTRAINT {_quote(name)} TO {renamed}"
            )
        else:
            statements.append(f"ALTER INDEX {_quote(name)} RENAME TO {renamed}")
    statements.append(
        f"CREATE TABLE {_quote(t)} (LIKE {_quote(old)} INCLUDING DEFAULTS INCLUDING IDENTITY "
        f"INCLUDING CONSTRAINTS, {_quote(KEY)} date NOT NULL DEFAULT {TODAY}) "
        f"PARTITION BY RANGE ({_quote(KEY)})"
    )
    statements.append(
        f"ALTER TABLE {_quote(t)} ADD CONSTRAINT {_quote(t + '_pkey')} "
        f"PRIMARY KEY ({_quote('id')}, {_quote(KEY)})"
    )
    statements.append(
        f"ALTER TABLE {_quote(t)} ADD CONSTRAINT {_quote('djops_run_task_id_uniq')} "
        f"UNIQUE ({_quote('task_id')}, {_quote(KEY)})"
    )
    statements.extend(_model_indexes_sql())
    statements.append(
        f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), "
        f"(SELECT COALESCE(max(id), 0) + 1 FROM {_quote(old)}), false)"
    )
    statements.extend(create_partition_sql(day) for day in days(first, last))
    return statements


def _indexes_and_constraints(name: str) -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT CASE WHEN con.oid IS NULL THEN 'index' ELSE 'constraint' END, ic.relname "
            "FROM pg_index ix JOIN pg_class ic ON ic.oid = ix.indexrelid "
            "LEFT JOIN pg_constraint con ON con.conindid = ix.indexrelid "
            "AND con.conrelid = ix.indrelid WHERE ix.indrelid = to_regclass(%s) ORDER BY 2",
            [_quote(name)],
        )
        return list(cursor.fetchall())


def _model_indexes_sql() -> list[str]:
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        return [str(index.create_sql(TaskRun, editor)) for index in TaskRun._meta.indexes]


def convert(days_ahead: int) -> list[str]:
    """Swap the table for a partitioned one (yesterday to ``days_ahead``); the SQL run."""
    if connection.vendor != "postgresql":
        raise ValueError("daily partitions need PostgreSQL")
    if is_partitioned():
        raise ValueError(f"{table()} is already partitioned")
    if _exists(table() + UNPARTITIONED_SUFFIX):
        raise ValueError(
            f"{table() + UNPARTITIONED_SUFFIX} exists: copy it (--copy-unpartitioned) or "
            "drop it first"
        )
    now = today()
    statements = convert_sql(
        now - datetime.timedelta(days=1), now + datetime.timedelta(days=days_ahead)
    )
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    forget_layout()
    return statements


def _exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [_quote(name)])
        return bool(cursor.fetchone()[0])


def unpartitioned_left() -> bool:
    return _exists(table() + UNPARTITIONED_SUFFIX)


def unpartitioned_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {_quote(table() + UNPARTITIONED_SUFFIX)}")
        return int(cursor.fetchone()[0])


def copy_unpartitioned(batch_size: int, stats: BatchedDelete | None = None) -> Iterator[int]:
    """Move the rows of the old table into the partitions, ``batch_size`` a transaction.

    Each row goes to the partition of its first known moment (received, started, finished),
    or into the row its task id got since the conversion, merged by the recorder's rules.
    Yields the running count; drops the old table once it is empty.
    """
    from djcelery_ops.runs.merge import COLUMNS
    from djcelery_ops.runs.sql import merge_assignments

    t, old = _quote(table()), _quote(table() + UNPARTITIONED_SUFFIX)
    first_day = "COALESCE(o.received_at, o.started_at, o.finished_at, now())"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT min(({first_day} AT TIME ZONE 'UTC')::date), "
            f"max(({first_day} AT TIME ZONE 'UTC')::date) FROM {old} o"
        )
        low, high = cursor.fetchone()
    if low is not None:
        create_partitions(low, high)
    columns = ", ".join(_quote(c) for c in ("id", *COLUMNS))
    o_columns = ", ".join(f"o.{_quote(c)}" for c in ("id", *COLUMNS))
    copy = (
        f"INSERT INTO {t} ({columns}, {_quote(KEY)}) SELECT {o_columns}, COALESCE("
        f"(SELECT r.{_quote(KEY)} FROM {t} r WHERE r.task_id = o.task_id LIMIT 1), "
        f"({first_day} AT TIME ZONE 'UTC')::date) FROM {old} o WHERE o.id = ANY(%s) "
        f"ON CONFLICT (task_id, {_quote(KEY)}) DO UPDATE SET {merge_assignments(table())}"
    )
    stats = stats if stats is not None else BatchedDelete()
    while True:
        began = time.monotonic()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {old} ORDER BY id LIMIT %s FOR UPDATE", [batch_size])
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                break
            cursor.execute(copy, [ids])
            cursor.execute(f"DELETE FROM {old} WHERE id = ANY(%s)", [ids])
        stats.record(len(ids), time.monotonic() - began)
        yield stats.deleted
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {old}")


def drop_partition(partition: Partition) -> None:
    """Detach and drop one partition; waits at most ``LOCK_TIMEOUT`` for the locks."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"ALTER TABLE {_quote(table())} DETACH PARTITION {_quote(partition.name)}")
        cursor.execute(f"DROP TABLE {_quote(partition.name)}")
