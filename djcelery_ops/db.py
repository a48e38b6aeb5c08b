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
import time
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
