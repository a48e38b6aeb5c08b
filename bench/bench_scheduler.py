"""Scheduler tick cost with 10,000 periodic tasks: LockedDatabaseScheduler vs DatabaseScheduler.

Run from the repository root: ``.venv/bin/python bench/bench_scheduler.py`` (``DATABASE_URL``
selects the database as in the tests; a throw-away test database is created and dropped).
Tasks are published to kombu's in-memory transport so that only the scheduler is measured.

Per scheduler, in the same run and database:
- load: start-up and the first tick (read 10,000 rows, build the heap; the locked scheduler
  reads them again when it becomes the leader, so it continues from the database's runs);
- idle tick: median tick when nothing is due (the common case, once per beat loop);
- dispatch: mean time per due entry while 300 entries are due (the locked scheduler writes
  ``last_run_at`` after each dispatch; the stock one only at sync).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ["CELERY_BROKER_URL"] = "memory://"

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django_celery_beat.models import IntervalSchedule, PeriodicTask  # noqa: E402
from django_celery_beat.schedulers import DatabaseScheduler  # noqa: E402

from djcelery_ops.schedules.scheduler import LockedDatabaseScheduler  # noqa: E402
from tests.celery_app import app  # noqa: E402

TASKS = 10_000
DUE = 300
IDLE_TICKS = 200


def create_tasks() -> None:
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    now = datetime.now(UTC)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(
            name=f"bench-{i}", task="tests.testapp.tasks.record_effect", interval=hourly,
            args="[]", kwargs="{}", last_run_at=now, queue="bench",
        )
        for i in range(TASKS)
    )  # fmt: skip


def make_due() -> None:
    long_ago = datetime.now(UTC) - timedelta(days=1)
    names = [f"bench-{i}" for i in range(DUE)]
    PeriodicTask.objects.filter(name__in=names).update(last_run_at=long_ago)
    PeriodicTask.objects.exclude(name__in=names).update(last_run_at=datetime.now(UTC))


def measure(cls: type[DatabaseScheduler]) -> dict[str, float]:
    make_due()
    started = time.perf_counter()
    scheduler = cls(app=app, lazy=False)
    scheduler.tick()  # loads and builds the heap, dispatches the first due entry
    load = time.perf_counter() - started

    started, dispatched = time.perf_counter(), 1
    while dispatched < DUE and scheduler.tick() == 0:
        dispatched += 1
    dispatch = (time.perf_counter() - started) / max(dispatched - 1, 1)

    idle = []
    for _ in range(IDLE_TICKS):
        started = time.perf_counter()
        scheduler.tick()
        idle.append(time.perf_counter() - started)
    scheduler.close()
    scheduler._finalize.cancel()  # the finalizer would keep 10,000 entries alive
    del scheduler
    gc.collect()
    return {
        "load_s": load,
        "dispatch_ms": dispatch * 1000,
        "idle_tick_ms": statistics.median(idle) * 1000,
        "dispatched": dispatched,
    }


def mean_of(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.mean(r[key] for r in results) for key in results[0]}


def main() -> None:
    setup_test_environment()
    # A database of its own, so the bench never touches the test suite's test database.
    test_settings = connection.settings_dict.setdefault("TEST", {})
    if connection.vendor == "sqlite":
        test_settings["NAME"] = str(
            Path(test_settings.get("NAME") or "var/tests/x").with_name("bench.sqlite3")
        )
    else:
        test_settings["NAME"] = f"bench_{connection.settings_dict['NAME']}"
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        create_tasks()
        # ABBA order, so that warm-up and table bloat weigh on both alike.
        runs = {DatabaseScheduler: [], LockedDatabaseScheduler: []}
        order = (DatabaseScheduler, LockedDatabaseScheduler, LockedDatabaseScheduler)
        for cls in (*order, DatabaseScheduler):
            runs[cls].append(measure(cls))
        stock, locked = (mean_of(runs[cls]) for cls in (DatabaseScheduler, LockedDatabaseScheduler))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(f"database: {connection.vendor}, {TASKS} periodic tasks, {DUE} due, 2 runs each")
    print(f"{'metric':<14}{'DatabaseScheduler':>20}{'LockedDatabaseScheduler':>26}{'ratio':>8}")
    for key in ("load_s", "dispatch_ms", "idle_tick_ms"):
        ratio = locked[key] / stock[key] if stock[key] else float("nan")
        print(f"{key:<14}{stock[key]:>20.3f}{locked[key]:>26.3f}{ratio:>8.2f}")
    print(f"dispatched per run: stock {stock['dispatched']:.0f}, locked {locked['dispatched']:.0f}")
    print("ratio = locked / stock (below 1: the locked scheduler is faster)")


if __name__ == "__main__":
    main()
