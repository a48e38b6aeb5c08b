"""Throughput of an idempotent no-op task against a plain Celery ``acks_late`` no-op.

Both run in the same invocation, on one real ``celery worker`` subprocess (prefork,
``--concurrency``), Redis and PostgreSQL by default::

    .venv/bin/python bench/bench_idempotency.py [--tasks 2000] [--rounds 2] [--concurrency 2]

``DATABASE_URL`` and ``CELERY_BROKER_URL`` select other services (Redis only: "done" is read
from the broker). The bench creates and drops its own database ``test_<name>_bench``. The
worker runs with ``CELERY_DB_REUSE_MAX`` (``--db-reuse-max``, 0 to leave it unset): without
it Celery's Django fixup opens a new database connection for every task.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/wtidem")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/12")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--db-reuse-max", type=int, default=1000)
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    os.environ["DJCELERY_OPS_TEST_DB_NAME"] = _bench_db_name()
    import django

    django.setup()
    from django.db import connection

    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        run(options)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def _bench_db_name() -> str:
    import dj_database_url

    name = dj_database_url.parse(os.environ["DATABASE_URL"])["NAME"]
    return f"{Path(name).stem if name.endswith('.sqlite3') else name}_bench"


def run(options: argparse.Namespace) -> None:
    import redis
    from django.conf import settings
    from django.db import connection

    from djcelery_ops.models import IdempotencyKey
    from tests.testapp import tasks
    from tests.worker import WorkerProcess, purge_queue

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = f"djops-bench-{uuid.uuid4().hex[:8]}"
    env = {"DJCELERY_OPS_TEST_DB_REUSE_MAX": str(options.db_reuse_max or "")}
    worker = WorkerProcess(queue=queue, concurrency=options.concurrency, env=env).start()

    def drained() -> bool:
        return client.llen(queue) == 0 and client.hlen("unacked") == 0

    def timed(task, first: int, count: int) -> float:
        started = time.perf_counter()
        for n in range(first, first + count):
            task.apply_async((n,), queue=queue)
        deadline = time.monotonic() + 600
        while not drained():
            if time.monotonic() > deadline:
                raise SystemExit(f"not done after 600 s; worker log: {worker.log_path}")
            time.sleep(0.01)
        return time.perf_counter() - started

    try:
        print(f"{connection.vendor}, {settings.CELERY_BROKER_URL.split('://')[0]}, "
              f"{options.tasks} tasks, concurrency {options.concurrency}, "
              f"CELERY_DB_REUSE_MAX={options.db_reuse_max or 'unset'}")  # fmt: skip
        timed(tasks.bench_plain_noop, 0, 100)  # warm up both paths
        timed(tasks.bench_idempotent_noop, 0, 100)
        plain, idem = [], []
        for index in range(options.rounds):
            first = (index + 1) * options.tasks
            plain.append(timed(tasks.bench_plain_noop, first, options.tasks))
            idem.append(timed(tasks.bench_idempotent_noop, first, options.tasks))
        expected = 100 + options.rounds * options.tasks
        keys = IdempotencyKey.objects.filter(key__startswith="bench:", state="done").count()
        assert keys == expected, f"{keys} idempotency keys done, expected {expected}"
        best_plain, best_idem = min(plain), min(idem)
        for label, seconds in (("plain acks_late no-op", best_plain),
                               ("idempotent no-op (atomic)", best_idem)):  # fmt: skip
            rate = options.tasks / seconds
            print(f"{label:28} {options.tasks} tasks in {seconds:6.2f} s  {rate:8.0f}/s")
        print(f"ratio idempotent/plain: {best_plain / best_idem:.2f} (best of {options.rounds})")
    finally:
        worker.stop()
        purge_queue(queue)


if __name__ == "__main__":
    main()
