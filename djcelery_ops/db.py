"""Database helpers of the shared core: the database clock, one upsert, batched deletes.

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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.db import connection, connections, models, transaction
from django.db.models import QuerySet


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


def delete_in_batches(rows: QuerySet[Any], batch_size: int) -> Iterator[int]:
    """Delete ``rows`` ``batch_size`` at a time, yielding the running count of deleted rows.

    Each batch re-applies the queryset's filters in its own transaction, so a row that
    stopped matching meanwhile (a dead letter replayed during a purge) is kept, and no lock
    is held longer than one batch.
    """
    model_label = rows.model._meta.label
    deleted = 0
    while ids := list(rows.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        with transaction.atomic():
            deleted += rows.filter(pk__in=ids).delete()[1].get(model_label, 0)
        yield deleted


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
