"""Purge speed on big tables: rows/s and the longest batch transaction of each purge command.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wtretbench \
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tables", default="runs,keys,letters")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each command's")
    parser.add_argument("--partitioned", action="store_true")
    parser.add_argument("--keep", action="store_true", help="do not TRUNCATE afterwards")
    options = parser.parse_args()

    import django

    django.setup()
    from django.apps import apps
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("needs PostgreSQL: set DATABASE_URL")
    call_command("migrate", verbosity=0)
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
