"""Purge speed on big tables: rows/s and the longest batch transaction of each purge command.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/retbench \
    .venv/bin/python bench/bench_retention.py --rows 5000000 [--tables runs,keys,letters]

For each table it seeds ``--rows`` rows with one ``INSERT ... SELECT generate_series``
(spread over the last 60 days, one row in two older than the 30-day cutoff), runs
``VACUUM ANALYZE``, then runs the purge command (``purge_task_runs``,
``purge_idempotency_keys``, ``purge_dead_letters``) with ``--older-than 30d -v 2`` and
reads its ``Took ...`` line: rows/s over the whole run (counting included) and the longest
batch transaction, which is the longest any row lock was held. Each table is emptied
(``TRUNCATE``) when its command is done, so the disk is given back.

``--partitioned`` converts the job-run table to daily partitions first
(``partition_task_runs``), so ``purge_task_runs`` drops whole days instead.

``--recording`` measures instead what daily partitions are for: the recorder's upsert
(``runs.sql.write_runs``, batches of 2,000 new task ids, each one event carrying started
and succeeded, as a child writes a task that ran at once) on the partitioned table while
it is empty, then again with ``--rows`` runs in it spread over the 60 days before
yesterday (each day built as a table and attached, indexes included, so seeding is not
the bottleneck). Fresh task ids each time; the median of ``--rounds`` timed passes.

    .venv/bin/python bench/bench_retention.py --recording --rows 20000000 [--batches 50]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

# Rows spread evenly over the last 60 days: row g is (rows - g) * step seconds old.
AGE = "(now() - (%(rows)s - g) * %(step)s * interval '1 second')"

TABLES = {
    "runs": (
        "djcelery_ops.TaskRun",
        ["purge_task_runs"],
        {
            "task_id": "md5(g::text)::uuid::text",
            "task_name": "'app.tasks.job_' || (g %% 20)",
            "state": "'succeeded'",
            "progress": "40",
            "received_at": AGE,
            "started_at": AGE,
            "finished_at": AGE,
            "runtime": "0.05",
        },
    ),
    "keys": (
        "djcelery_ops.IdempotencyKey",
        ["purge_idempotency_keys"],
        {
            "key": "'key-' || g",
            "task_name": "'app.tasks.job_' || (g %% 20)",
            "mode": "'atomic'",
            "state": "'done'",
            "token": "1",
            "attempts": "1",
            "created_at": AGE,
            "completed_at": AGE,
        },
    ),
    "letters": (
        "djcelery_ops.DeadLetter",
        ["purge_dead_letters"],
        {
            "task_id": "md5(g::text)::uuid::text",
            "task_name": "'app.tasks.job_' || (g %% 20)",
            "reason": "'failed'",
            "fingerprint": "md5((g %% 100)::text)",
            "status": "(ARRAY['resolved', 'discarded', 'pending'])[1 + g %% 3]",
            "first_failed_at": AGE,
            "last_failed_at": AGE,
            "updated_at": AGE,
        },
    ),
}


def seed_sql(model: type, overrides: dict[str, str]) -> str:
    """``INSERT ... SELECT FROM generate_series``: every NOT NULL column gets a value."""
    from django.db import connection, models

    quote = connection.ops.quote_name
    columns, values = [], []
    for field in model._meta.concrete_fields:  # type: ignore[attr-defined]
        if field.primary_key:
            continue
        if field.name in overrides:
            value = overrides[field.name]
        elif field.null:
            continue
        elif isinstance(field, models.JSONField):
            value = "'[]'::jsonb"
        elif isinstance(field, models.BooleanField):
            value = "false"
        elif isinstance(field, models.CharField | models.TextField):
            value = "''"
        elif isinstance(field, models.IntegerField | models.FloatField):
            value = "0"
        else:
            raise SystemExit(f"no seed value for {model.__name__}.{field.name}")
        columns.append(quote(field.column))
        values.append(value)
    table = quote(model._meta.db_table)  # type: ignore[attr-defined]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} "
        "FROM generate_series(%(start)s, %(stop)s) AS g"
    )


def seed(model: type, overrides: dict[str, str], rows: int, chunk: int = 500_000) -> float:
    from django.db import connection, transaction

    sql, began = seed_sql(model, overrides), time.monotonic()
    step = 60 * 86400 / rows
    for start in range(1, rows + 1, chunk):
        stop = min(rows, start + chunk - 1)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, {"start": start, "stop": stop, "rows": rows, "step": step})
        print(f"  seeded {stop:,}/{rows:,}", flush=True)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(model._meta.db_table)}")  # type: ignore[attr-defined]
    return time.monotonic() - began


TOOK = re.compile(r"Took ([\d.]+) s: ([\d,]+) rows/s, (\d+) batch(?:es)?, longest batch ([\d.]+) s")


def purge(command: str, batch_size: int | None) -> tuple[str, str]:
    from django.core.management import call_command

    out = io.StringIO()
    args = ["--older-than", "30d", "--verbosity", "2"]
    if batch_size:
        args += ["--batch-size", str(batch_size)]
    call_command(command, *args, stdout=out)
    return out.getvalue(), " ".join([command, *args])


def new_runs(size: int) -> list[dict]:
    import uuid

    from django.utils import timezone

    now = timezone.now()
    return [
        {
            "task_id": str(uuid.uuid4()),
            "state": "succeeded",
            "progress": 40,
            "retries": 0,
            "task_name": f"app.tasks.job_{n % 20}",
            "queue": "default",
            "worker_hostname": "bench@worker-1",
            "args_digest": uuid.uuid4().hex,
            "received_at": now,
            "started_at": now,
            "finished_at": now,
            "runtime": 0.01,
        }
        for n in range(size)
    ]


def recording_rate(batches: int, size: int = 2000) -> float:
    """Events/s of ``write_runs`` over ``batches`` batches of new task ids."""
    from django.db import transaction

    from djcelery_ops.runs.sql import write_runs

    began = time.monotonic()
    for _ in range(batches):
        events = new_runs(size)
        with transaction.atomic():
            write_runs(events)
    return batches * size / (time.monotonic() - began)


def buffers_per_batch(size: int = 2000) -> int:
    """Shared buffers (pages) one batch's upsert touches, by ``EXPLAIN (ANALYZE, BUFFERS)``
    in a transaction rolled back: a cost the machine's load does not move."""
    import json

    from django.db import connection, transaction

    from djcelery_ops.runs.sql import write_runs

    plans = []

    def explain(execute, sql, params, many, context):
        if not sql.startswith("INSERT INTO"):
            return execute(sql, params, many, context)
        result = execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params, many, context)
        plan = context["cursor"].fetchone()[0]
        plans.append(json.loads(plan) if isinstance(plan, str) else plan)
        return result

    with transaction.atomic():
        with connection.execute_wrapper(explain):
            write_runs(new_runs(size))
        transaction.set_rollback(True)
    top = plans[0][0]["Plan"]
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


def seed_old_partitions(rows: int, days: int = 60) -> float:
    """``rows`` runs over the ``days`` days before yesterday: per day, fill a plain table,
    then attach it as that day's partition (PostgreSQL builds its indexes in one sort)."""
    import datetime

    from django.apps import apps
    from django.db import connection

    from djcelery_ops.runs import partitions

    model = apps.get_model("djcelery_ops.TaskRun")
    overrides = dict(TABLES["runs"][2])
    per_day, began, today = rows // days, time.monotonic(), partitions.today()
    quote, parent = connection.ops.quote_name, connection.ops.quote_name(partitions.table())
    for offset in range(days + 1, 1, -1):
        day = today - datetime.timedelta(days=offset)
        name = partitions.partition_name(day)
        start = (days + 1 - offset) * per_day + 1
        moment = f"('{day}'::timestamptz + (g - {start}) * interval '1 second' * {86400 / per_day})"
        overrides.update(task_id="md5(g::text)::uuid::text", received_at=moment,
                         started_at=moment, finished_at=moment)  # fmt: skip
        sql = seed_sql(model, overrides).replace(parent, quote(name), 1)
        sql = sql.replace(") SELECT ", ", recorded_on) SELECT ", 1).replace(
            " FROM generate_series", f", '{day}'::date FROM generate_series", 1
        )
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quote(name)}")  # left by a failed run
            like = f"LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            cursor.execute(f"CREATE TABLE {quote(name)} ({like})")
            cursor.execute(
                f"ALTER TABLE {quote(name)} ALTER COLUMN id SET DEFAULT "
                f"nextval(pg_get_serial_sequence('{partitions.table()}', 'id'))"
            )
            cursor.execute(sql, {"start": start, "stop": start + per_day - 1})
            cursor.execute(
                f"ALTER TABLE {parent} ATTACH PARTITION {quote(name)} "
                f"FOR VALUES FROM ('{day}') TO ('{day + datetime.timedelta(days=1)}')"
            )
            cursor.execute(f"ANALYZE {quote(name)}")
        print(f"  seeded {day}: {(days + 2 - offset) * per_day:,}/{rows:,}", flush=True)
    return time.monotonic() - began


def bench_recording(rows: int, batches: int, rounds: int) -> None:
    import statistics

    from django.core.management import call_command
    from django.db import connection

    from djcelery_ops.runs import partitions

    if not partitions.is_partitioned():
        call_command("partition_task_runs", "--convert", "--days-ahead", "2")
    t = connection.ops.quote_name(partitions.table())
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {t}")
    for p in partitions.partitions():
        if p.end < partitions.today() - __import__("datetime").timedelta(days=1):
            partitions.drop_partition(p)
    figures, buffers = {}, {}
    for label, seed_rows in (("empty", 0), (f"{rows:,} runs", rows)):
        if seed_rows:
            print(f"seeding {seed_rows:,} runs into old partitions", flush=True)
            print(f"  seeded in {seed_old_partitions(seed_rows):.0f} s", flush=True)
        rates = []
        for _ in range(rounds):
            with connection.cursor() as cursor:  # today's partition starts empty each pass
                cursor.execute(
                    f"DELETE FROM {t} WHERE recorded_on >= (now() AT TIME ZONE 'UTC')::date"
                )
                cursor.execute(f"VACUUM ANALYZE {t}")
            rates.append(recording_rate(batches))
            print(f"  {label}: {rates[-1]:,.0f} runs/s", flush=True)
        figures[label] = rates
        buffers[label] = buffers_per_batch()
    print()
    print(f"{'table':<16} {'median runs/s':>14} {'passes':>28} {'pages/batch':>12}")
    for label, rates in figures.items():
        passes = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{label:<16} {statistics.median(rates):>14,.0f} {passes:>28} {buffers[label]:>12,}")
    empty, full = (statistics.median(r) for r in figures.values())
    pages_empty, pages_full = buffers.values()
    print(f"ratio {full / empty:.3f} runs/s, {pages_full / pages_empty:.3f} pages (full / empty)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tables", default="runs,keys,letters")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each command's")
    parser.add_argument("--partitioned", action="store_true")
    parser.add_argument("--keep", action="store_true", help="do not TRUNCATE afterwards")
    parser.add_argument("--recording", action="store_true", help="time the recorder instead")
    parser.add_argument("--batches", type=int, default=50, help="--recording: batches a pass")
    parser.add_argument("--rounds", type=int, default=3, help="--recording: passes a table")
    options = parser.parse_args()

    from bench.seed_runs import setup_on_postgresql

    # It empties (TRUNCATE) the tables it measures: a database named for the bench only.
    setup_on_postgresql("bench_retention.py", bench_named=True)
    from django.apps import apps
    from django.core.management import call_command
    from django.db import connection

    if options.recording:
        bench_recording(options.rows, options.batches, options.rounds)
        return
    results = []
    for name in options.tables.split(","):
        label, commands, overrides = TABLES[name]
        model = apps.get_model(label)
        table = connection.ops.quote_name(model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {table} CASCADE")
        print(f"{name}: seeding {options.rows:,} rows", flush=True)
        seconds = seed(model, overrides, options.rows)
        print(f"  seeded in {seconds:.0f} s", flush=True)
        if name == "runs" and options.partitioned:
            call_command("partition_task_runs", "--convert", "--days-ahead", "2")
        for command in commands:
            output, typed = purge(command, options.batch_size)
            lines = output.strip().splitlines()
            print(f"  {typed}\n    " + "\n    ".join(lines[-3:]), flush=True)
            took = TOOK.search(output)
            if took:
                results.append((command, options.rows, *took.groups()))
        if not options.keep:
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {table} CASCADE")
    print()
    print(
        f"{'command':<24} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'batches':>8} {'longest':>8}"
    )
    for command, rows, seconds, rate, batches, longest in results:
        print(f"{command:<24} {rows:>10,} {seconds:>8} {rate:>10} {batches:>8} {longest + ' s':>8}")


if __name__ == "__main__":
    main()
