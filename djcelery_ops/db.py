"""Database helpers of the shared core: the database clock, one upsert, batched writes.

Every "insert or take over" in the app is the same statement, built by ``upsert``:

    INSERT INTO t (...) VALUES (...)
    ON CONFLICT (key) DO UPDATE SET ... [WHERE <the existing row may be taken>]
    RETURNING column

A row comes back only when this caller inserted the key or its update applied, so one
statement both decides and says who won. The idempotency claim, the enqueue lock, the beat
leader lease, delivery counting and dead-letter storage are all this statement with
different columns and conditions. The ORM cannot express it: ``bulk_create(
update_conflicts=True)`` has no ``WHERE`` and does not say whether the row was inserted.
Times come from the database clock, so no process's local clock decides who may take over.
PostgreSQL, and SQLite >= 3.35 (``RETURNING``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.db import connection, connections, models, transaction
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL


class UnsupportedDatabase(NotImplementedError):
    pass


def require_supported_vendor() -> None:
    if connection.vendor not in ("postgresql", "sqlite"):
        raise UnsupportedDatabase(
            f"djcelery_ops needs PostgreSQL or SQLite, not {connection.vendor}"
        )


@dataclasses.dataclass(frozen=True)
class Sql:
    """A piece of SQL with its parameters; ``{table}`` in it names the upserted table."""

    text: str
    params: Sequence[Any] = ()


def now_sql() -> Sql:
    """The database's current time (not the transaction's start: leases need real time)."""
    if connection.vendor == "postgresql":
        return Sql("clock_timestamp()")
    require_supported_vendor()
    # Django stores SQLite datetimes as UTC text in this form, so text comparison works.
    return Sql("strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')")


def now_plus_sql(seconds: float) -> Sql:
    """The database's current time plus ``seconds``."""
    if connection.vendor == "postgresql":
        return Sql("clock_timestamp() + make_interval(secs => %s)", [float(seconds)])
    require_supported_vendor()
    return Sql("strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)", [f"{seconds:+.3f} seconds"])


def _value_sql(model: type[models.Model], column: str, value: Any) -> Sql:
    if isinstance(value, Sql):
        return value
    field = model._meta.get_field(column)
    assert isinstance(field, models.Field), f"{column} is not a concrete column"
    return Sql("%s", [field.get_db_prep_save(value, connection)])


def _render(sql: Sql, table: str) -> tuple[str, list[Any]]:
    return sql.text.replace("{table}", table), list(sql.params)


def upsert(
    model: type[models.Model],
    *,
    conflict: str,
    values: Mapping[str, Any],
    update: Mapping[str, Any] | None = None,
    where: Sql | None = None,
    returning: str = "id",
) -> Any | None:
    """Insert ``values``, or on a conflict on ``conflict`` apply ``update`` if ``where``.

    ``values`` and ``update`` map column names to Python values (adapted by the model's
    field) or ``Sql``. ``update`` defaults to every inserted column but the conflict key,
    taken from the proposed row (``excluded``). In ``Sql`` text, ``{table}`` is the
    existing row's table. Returns the ``returning`` column of the row written, or None when
    the existing row was kept.
    """
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    params: list[Any] = []
    placeholders = []
    for column, value in values.items():
        text, value_params = _render(_value_sql(model, column, value), table)
        placeholders.append(text)
        params.extend(value_params)
    if update is None:
        update = {c: Sql(proposed(c)) for c in values if c != conflict}
    assignments = []
    for column, value in update.items():
        text, value_params = _render(_value_sql(model, column, value), table)
        assignments.append(f"{quote(column)} = {text}")
        params.extend(value_params)
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(c) for c in values)}) "
        f"VALUES ({', '.join(placeholders)}) "
        f"ON CONFLICT ({quote(conflict)}) DO UPDATE SET {', '.join(assignments)}"
    )
    if where is not None:
        text, where_params = _render(where, table)
        sql += f" WHERE {text}"
        params.extend(where_params)
    sql += f" RETURNING {quote(returning)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def column(name: str) -> str:
    """``{table}.name``, quoted: the existing row's column in ``upsert`` SQL."""
    return "{table}." + connection.ops.quote_name(name)


def proposed(name: str) -> str:
    """``excluded.name``, quoted: the proposed row's column in ``upsert`` SQL."""
    return "excluded." + connection.ops.quote_name(name)


@dataclasses.dataclass
class BatchedDelete:
    """Running totals of a batched delete: what progress lines and the benchmark print."""

    deleted: int = 0
    batches: int = 0
    longest: float = 0.0
    """Seconds of the longest batch transaction: the longest any row lock was held."""
    started: float = dataclasses.field(default_factory=time.monotonic)

    def record(self, deleted: int, seconds: float) -> None:
        self.deleted += deleted
        self.batches += 1
        self.longest = max(self.longest, seconds)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Rows deleted per second of wall-clock time so far."""
        return self.deleted / max(self.elapsed, 1e-9)


# A batch whose transaction takes longer than this halves the next one; a batch four
# times quicker doubles it again, up to the batch size asked for. Locks stay well under a
# second on a slow or loaded database.
BATCH_SECONDS_TARGET = 0.5


def delete_in_batches(
    rows: QuerySet[Any], batch_size: int, stats: BatchedDelete | None = None
) -> Iterator[int]:
    """Delete ``rows`` ``batch_size`` at a time, yielding the running count of deleted rows.

    Keyset pagination on the primary key: each batch reads the next ``batch_size`` matching
    ids after the last one seen (an index range, never the deleted rows again), then deletes
    them in its own short transaction that re-applies the queryset's filters, so a row that
    stopped matching meanwhile (a dead letter replayed during a purge) is kept, and no lock
    is held longer than one batch. ``batch_size`` is the most a batch deletes: a batch
    slower than ``BATCH_SECONDS_TARGET`` halves the next. ``stats``, if given, gets each
    batch's count and time.
    """
    model_label = rows.model._meta.label
    stats = stats if stats is not None else BatchedDelete()
    ordered = rows.order_by("pk")
    last, size = None, batch_size
    while True:
        page = ordered if last is None else ordered.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:size])
        if not ids:
            return
        last = ids[-1]
        began = time.monotonic()
        with transaction.atomic():
            # only("pk"): when related rows make Django collect the rows before deleting,
            # it reads ids, not every column (a dead letter's args and traceback).
            doomed = rows.filter(pk__in=ids).only("pk")
            deleted = doomed.delete()[1].get(model_label, 0)
        seconds = time.monotonic() - began
        stats.record(deleted, seconds)
        size = next_batch_size(size, seconds, batch_size)
        yield stats.deleted


def next_batch_size(size: int, seconds: float, most: int) -> int:
    if seconds > BATCH_SECONDS_TARGET:
        return max(1, size // 2)
    if seconds < BATCH_SECONDS_TARGET / 4:
        return min(most, size * 2)
    return size


def distinct_column_values(
    model: type[models.Model], column: str, *, where: Mapping[str, str] | None = None,
    using: str = "default",
) -> list[str]:  # fmt: skip
    """Distinct non-empty values of an indexed text column, in order.

    On PostgreSQL a recursive query walks the index one value at a time (a "loose index
    scan", or skip scan): a few dozen index probes instead of a ``DISTINCT`` that reads
    millions of rows. ``where`` (column: value, equality) must be the leading columns of
    that index. The ``<> ''`` lets the planner use a partial index on ``column <> ''``.
    Elsewhere (SQLite) a plain ``DISTINCT``.
    """
    where = dict(where or {})
    connection_ = connections[using]
    if connection_.vendor != "postgresql":
        rows = model._default_manager.using(using).filter(**where).exclude(**{column: ""})
        return sorted(set(rows.order_by().values_list(column, flat=True)))
    quote = connection_.ops.quote_name
    table, col = quote(model._meta.db_table), quote(column)
    fixed = "".join(f" AND {quote(name)} = %s" for name in where)
    values = list(where.values())
    sql = f"""
        WITH RECURSIVE walk(value) AS (
            (SELECT {col} FROM {table} WHERE {col} > ''{fixed} ORDER BY {col} LIMIT 1)
            UNION ALL
            SELECT (
                SELECT {col} FROM {table} WHERE {col} > walk.value AND {col} <> ''{fixed}
                ORDER BY {col} LIMIT 1
            )
            FROM walk WHERE walk.value IS NOT NULL
        )
        SELECT value FROM walk WHERE value IS NOT NULL
    """  # noqa: S608 - quoted names of the model's own table and columns
    with connection_.cursor() as cursor:
        cursor.execute(sql, values + values)
        return [row[0] for row in cursor.fetchall()]


def update_from_values(
    model: type[models.Model],
    *,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    where: Sql | None = None,
) -> int:
    """Many rows, each with values of its own, in one statement; returns the rows changed.

        UPDATE t SET c = v.c, ... FROM (VALUES (key, c, ...), ...) AS v
        WHERE t.key = v.key [AND where]

    ``rows`` are ``(key, *columns)`` tuples of Python values (adapted by the model's
    fields). In ``where``, ``{table}`` is the updated table and ``{new:<column>}`` the
    row's new value. PostgreSQL, and SQLite >= 3.33 (``UPDATE ... FROM``).
    """
    if not rows:
        return 0
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    names = [key, *columns]
    fields = [model._meta.get_field(name) for name in names]
    casts = [
        f"CAST(%s AS {field.db_type(connection)})" if connection.vendor == "postgresql" else "%s"
        for field in fields
        if isinstance(field, models.Field)
    ]
    assert len(casts) == len(names), "every column must be a concrete field"
    row_sql = f"({', '.join(casts)})"
    params: list[Any] = []
    for row in rows:
        for field, value in zip(fields, row, strict=True):
            assert isinstance(field, models.Field)
            params.append(field.get_db_prep_save(value, connection))
    # A VALUES list names its columns column1, column2, ... on PostgreSQL and SQLite alike.
    new = {name: f"v.column{position}" for position, name in enumerate(names, 1)}
    assignments = ", ".join(f"{quote(name)} = {new[name]}" for name in columns)
    sql = (
        f"UPDATE {table} SET {assignments} FROM (VALUES {', '.join([row_sql] * len(rows))}) AS v"
        f" WHERE {table}.{quote(key)} = {new[key]}"
    )
    if where is not None:
        text, where_params = _render(where, table)
        for name, value_column in new.items():
            text = text.replace("{new:" + name + "}", value_column)
        sql += f" AND ({text})"
        params.extend(where_params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def insert_rows(
    model: type[models.Model], *, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> int:
    """Insert ``rows`` of Python values (adapted by the model's fields) into ``columns``;
    returns how many. Like ``bulk_create`` without model instances: no defaults are filled
    in and no signals sent, so ``columns`` must name every column without a default.

    On PostgreSQL one statement, ``INSERT ... SELECT * FROM unnest(<one array per
    column>)``: psycopg binds a few arrays far faster than thousands of placeholders.
    Elsewhere ``INSERT ... VALUES (...), (...)``, as many rows per statement as it takes.
    """
    if not rows:
        return 0
    fields = [model._meta.get_field(name) for name in columns]
    concrete = [field for field in fields if isinstance(field, models.Field)]
    assert len(concrete) == len(columns), "every column must be a concrete field"
    quote = connection.ops.quote_name
    head = (
        f"INSERT INTO {quote(model._meta.db_table)} "
        f"({', '.join(quote(field.column or field.attname) for field in concrete)}) "
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = [
                _array(field, [row[position] for row in rows])
                for position, field in enumerate(concrete)
            ]
            casts = ", ".join(f"%s::{field.db_type(connection)}[]" for field in concrete)
            cursor.execute(f"{head}SELECT * FROM unnest({casts})", arrays)
            return len(rows)
        size = max(1, connection.ops.bulk_batch_size(concrete, list(rows)))
        row_sql = f"({', '.join(['%s'] * len(columns))})"
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            params = [
                field.get_db_prep_save(value, connection)
                for row in part
                for field, value in zip(concrete, row, strict=True)
            ]
            cursor.execute(f"{head}VALUES {', '.join([row_sql] * len(part))}", params)
    return len(rows)


def _array(field: models.Field[Any, Any], values: list[Any]) -> list[Any]:
    """A column's values adapted for a PostgreSQL array; a value the same as the row
    before's (a constant column) is adapted once."""
    adapted: list[Any] = []
    last: Any = object()
    for value in values:
        if value is not last:
            last, prepared = value, _array_value(field, value)
        adapted.append(prepared)
    return adapted


def _array_value(field: models.Field[Any, Any], value: Any) -> Any:
    if isinstance(field, models.JSONField):  # as text, cast to jsonb by the statement
        return None if value is None else json.dumps(value, cls=field.encoder)
    return field.get_db_prep_save(value, connection)


def any_of(values: Sequence[Any], db_type: str) -> Sql:
    """``<column> <any_of>``: membership in many values for raw SQL. On PostgreSQL one array
    parameter (``= ANY(%s::bigint[])``), bound far faster than a placeholder per value."""
    if connection.vendor == "postgresql":
        return Sql(f"= ANY(%s::{db_type}[])", [list(values)])
    return Sql(f"IN ({', '.join(['%s'] * len(values))})", list(values))


def in_values(values: Sequence[Any], db_type: str) -> Any:
    """What ``<field>__in=`` gets for many values: on PostgreSQL a subquery over one array
    parameter (see ``any_of``), elsewhere the list itself."""
    if connection.vendor == "postgresql":
        return RawSQL(f"SELECT unnest(%s::{db_type}[])", [list(values)])
    return list(values)
