"""Seed millions of job runs into PostgreSQL, then time the admin and stats() on them.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/runsbench \
    .venv/bin/python bench/seed_runs.py --rows 5000000   # seed (generate_series), measure
    .venv/bin/python bench/seed_runs.py --measure-only    # measure what is there

Rows spread over the last 30 days (about 167,000 a day), 20 task names of uneven
popularity, 3 % failed or dead-lettered, a few hundred stuck in started, 3 queues, a tenant
on a third of them, one run in ten the child of the run before it (parent and root). Task
ids are UUIDs, as Celery's are: ``md5(n)::uuid``. Each figure is the median of 5 requests
after one warm-up, with the number of SQL queries it made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

SEED_SQL = """
INSERT INTO djcelery_ops_taskrun (
    task_id, task_name, state, progress, args_digest, queue, worker_hostname,
    periodic_task_name, root_id, parent_id, tenant, received_at, started_at, finished_at,
    runtime, retries, exception_class, exception_message)
SELECT
    md5(g::text)::uuid::text,
    'app.tasks.job_' || lpad((floor(20 * power(random(), 2)))::int::text, 2, '0'),
    s.state,
    CASE s.state WHEN 'started' THEN 20 WHEN 'dead_lettered' THEN 50 ELSE 40 END,
    md5(g::text) || md5((g + 1)::text),
    (ARRAY['default', 'mail', 'reports'])[1 + g %% 3],
    'seed@worker-' || (g %% 8),
    '',
    CASE WHEN g %% 10 = 0 THEN md5((g - 1)::text)::uuid::text ELSE '' END,
    CASE WHEN g %% 10 = 0 THEN md5((g - 1)::text)::uuid::text ELSE '' END,
    CASE WHEN g %% 3 = 0 THEN 'tenant-' || (g %% 50) ELSE '' END,
    t.received,
    t.received + interval '20 milliseconds',
    CASE WHEN s.state = 'started' THEN NULL ELSE t.received + t.runtime * interval '1 second' END,
    CASE WHEN s.state = 'started' THEN NULL ELSE t.runtime END,
    0,
    CASE WHEN s.state IN ('failed', 'dead_lettered') THEN 'builtins.ValueError' ELSE '' END,
    CASE WHEN s.state IN ('failed', 'dead_lettered') THEN 'seeded failure' ELSE '' END
FROM generate_series(%(start)s, %(stop)s) AS g,
LATERAL (SELECT now() - (%(rows)s - g) * %(step)s * interval '1 second' AS received,
                round((exp(random() * 4) / 20)::numeric, 4)::float8 AS runtime) AS t,
LATERAL (SELECT CASE WHEN g %% 10000 = 7 THEN 'started'
                     WHEN random() < 0.02 THEN 'dead_lettered'
                     WHEN random() < 0.01 THEN 'failed'
                     ELSE 'succeeded' END AS state) AS s
"""


def seed(rows: int, chunk: int) -> None:
    insert_in_chunks(SEED_SQL, "djcelery_ops_taskrun", rows, chunk)


def insert_in_chunks(sql: str, table: str, rows: int, chunk: int) -> None:
    """Run the seed ``sql`` (``generate_series(%(start)s, %(stop)s)``) ``chunk`` rows at a
    time, then VACUUM ANALYZE. ``%(step)s``: seconds between rows, so that they spread over
    30 days, oldest first (indexes on time grow at the end)."""
    from django.db import connection

    step = 30 * 24 * 3600 / rows
    started = time.monotonic()
    with connection.cursor() as cursor:
        for start in range(1, rows + 1, chunk):
            stop = min(start + chunk - 1, rows)
            cursor.execute(sql, {"start": start, "stop": stop, "rows": rows, "step": step})
            print(f"seeded {stop:,} of {rows:,} rows ({time.monotonic() - started:.0f} s)")
        cursor.execute(f"VACUUM ANALYZE {table}")
    print(f"seeded and analysed in {time.monotonic() - started:.0f} s")


def timed(label: str, action, repeat: int = 5, *, sql: bool = False) -> None:
    """Print ``| label | median | max | queries |`` (and, with ``sql``, the median time
    the database took, the sum of the queries' times: the rest is Python and templates)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    action()  # warm-up
    durations, in_database, queries = [], [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            began = time.perf_counter()
            action()
            durations.append((time.perf_counter() - began) * 1000)
        queries = len(captured)
        in_database.append(sum(float(query["time"]) for query in captured) * 1000)
    sql_column = f" {statistics.median(in_database):.0f} ms |" if sql else ""
    print(
        f"| {label} | {statistics.median(durations):.0f} ms | {max(durations):.0f} ms |"
        f" {queries} |{sql_column}"
    )


def seed_id(number: int) -> str:
    """The task id the seed gave to row ``number``: ``md5(number)`` as a UUID."""
    import hashlib
    import uuid

    return str(uuid.UUID(hashlib.md5(str(number).encode()).hexdigest()))


def admin_client():
    """A test client logged in as a superuser ``bench-admin``."""
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def page(client, url: str, data: dict | None = None):
    """A request for ``timed``: GET ``url`` (POST ``data`` if given), which must answer 200."""

    def request() -> None:
        response = client.post(url, data) if data is not None else client.get(url)
        assert response.status_code == 200, (url, response.status_code)

    return request


def measure() -> None:
    import datetime

    from djcelery_ops.models import TaskRun

    client = admin_client()
    base = "/admin/djcelery_ops/taskrun/"

    def get(url: str):
        return page(client, url)

    rows = TaskRun.objects.order_by().count()
    print(f"{rows:,} task runs\n")
    print("| what | median | max | SQL queries |")
    print("| --- | --- | --- | --- |")
    timed("changelist, no filter", get(base))
    timed("changelist, state=dead_lettered", get(base + "?state__exact=dead_lettered"))
    timed(
        "changelist, one task, last 24 h",
        get(base + "?task_name=app.tasks.job_05&received_within=24h"),
    )
    timed("changelist, search by task id", get(base + f"?q={seed_id(4_000_000)}"))
    timed("changelist, search by root id", get(base + f"?q={seed_id(3_999_999)}"))
    timed(
        "TaskRun.objects.stats(window=1 day)",
        lambda: TaskRun.objects.stats(datetime.timedelta(days=1)),
    )
    timed("stuck(older_than=1 h).count()", lambda: TaskRun.objects.stuck().count())
    timed("dashboard, 24 h", get(base + "dashboard/"))


def seed_options(description: str, chunk: int) -> argparse.ArgumentParser:
    """The options every seed script takes: --rows, --chunk, --measure-only."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=100_000, help="rows to add (100000)")
    parser.add_argument("--chunk", type=int, default=chunk, help=f"rows per INSERT ({chunk})")
    parser.add_argument("--measure-only", action="store_true", help="do not seed")
    return parser


def setup_on_postgresql(script: str, *, bench_named: bool = False) -> None:
    """Django set up and migrated, on PostgreSQL only (the seeds are its SQL); the database
    is created if missing. ``bench_named``: refuse a database whose name does not say
    ``bench`` (for a script that empties tables)."""
    import django
    from django.core.management import call_command
    from django.db import connection

    from bench.context import check_database_name, ensure_postgres_database

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(f"{script} needs PostgreSQL (DATABASE_URL=postgres://...)")
    if bench_named:
        check_database_name(url)
    ensure_postgres_database(url)
    django.setup()
    assert connection.vendor == "postgresql", connection.vendor
    call_command("migrate", verbosity=0)


def main() -> None:
    options = seed_options(__doc__.splitlines()[0], 500_000).parse_args()
    setup_on_postgresql("seed_runs.py")
    if not options.measure_only:
        from djcelery_ops.models import TaskRun

        TaskRun.objects.filter(worker_hostname__startswith="seed@").delete()
        seed(options.rows, options.chunk)
    measure()


if __name__ == "__main__":
    main()
