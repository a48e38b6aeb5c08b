"""Measure ``beat``: scheduler tick cost with many periodic tasks, LockedDatabaseScheduler
against django-celery-beat's DatabaseScheduler, in the same database and round.

Tasks are published to kombu's in-memory transport, so that only the scheduler is
measured. Per scheduler:
- dispatch: mean wall time per due entry while ``beat_due`` entries are due (the locked
  scheduler writes ``last_run_at`` after each dispatch; the stock one only at sync);
- idle tick: median tick when nothing is due (the common case, once per beat loop);
- load: start-up and the first tick (read the rows, build the heap), kept in the JSON.
CPU is this process's CPU time (the database's own work is not in it).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.context import Context
from bench.report import ms_row
from bench.workers import ordered

NAME = "beat"
PREFIX = "bench-beat-"


def create_tasks(count: int) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    now = datetime.now(UTC)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(
            name=f"{PREFIX}{i}", task="bench.plain", interval=hourly,
            args="[]", kwargs="{}", last_run_at=now, queue="bench_beat",
        )
        for i in range(count)
    )  # fmt: skip
    PeriodicTasks.update_changed()


def delete_tasks() -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    PeriodicTask.objects.filter(name__startswith=PREFIX).delete()
    PeriodicTasks.update_changed()


def make_due(due: int) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    long_ago = datetime.now(UTC) - timedelta(days=1)
    names = [f"{PREFIX}{i}" for i in range(due)]
    tasks = PeriodicTask.objects.filter(name__startswith=PREFIX)
    tasks.filter(name__in=names).update(last_run_at=long_ago)
    tasks.exclude(name__in=names).update(last_run_at=datetime.now(UTC))
    PeriodicTasks.update_changed()


def measure(cls: type, context: Context) -> dict[str, float]:
    make_due(context.beat_due)
    cpu, started = time.process_time(), time.perf_counter()
    scheduler = cls(app=context.beat_app, lazy=False)
    scheduler.tick()  # loads and builds the heap, dispatches the first due entry
    load = time.perf_counter() - started

    cpu, started, dispatched = time.process_time(), time.perf_counter(), 1
    while dispatched < context.beat_due and scheduler.tick() == 0:
        dispatched += 1
    per_dispatch = max(dispatched - 1, 1)
    dispatch = (time.perf_counter() - started) / per_dispatch
    dispatch_cpu = (time.process_time() - cpu) / per_dispatch

    idle, idle_cpu = [], []
    for _ in range(context.beat_idle_ticks):
        cpu, started = time.process_time(), time.perf_counter()
        scheduler.tick()
        idle.append(time.perf_counter() - started)
        idle_cpu.append(time.process_time() - cpu)
    scheduler.close()
    finalize = getattr(scheduler, "_finalize", None)
    if finalize is not None:
        finalize.cancel()  # the finalizer would keep every entry alive
    del scheduler
    gc.collect()
    return {
        "load_s": load,
        "dispatch_ms": dispatch * 1000,
        "dispatch_cpu_ms": dispatch_cpu * 1000,
        "idle_tick_ms": statistics.median(idle) * 1000,
        "idle_tick_cpu_ms": statistics.median(idle_cpu) * 1000,
        "dispatched": dispatched,
    }


def run_round(context: Context, round_index: int) -> dict[str, Any]:
    from django_celery_beat.schedulers import DatabaseScheduler

    from djcelery_ops.schedules.scheduler import LockedDatabaseScheduler

    classes = {"stock": DatabaseScheduler, "locked": LockedDatabaseScheduler}
    delete_tasks()
    create_tasks(context.beat_tasks)
    # Celery's broker_url prefers $CELERY_BROKER_URL over the configuration: without it the
    # schedulers publish to kombu's in-memory transport, as the beat app is configured.
    broker = os.environ.pop("CELERY_BROKER_URL", None)
    try:
        return {
            name: measure(classes[name], context) for name in ordered(list(classes), round_index)
        }
    finally:
        if broker is not None:
            os.environ["CELERY_BROKER_URL"] = broker
        delete_tasks()


def rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        ms_row("beat", "beat dispatch per due entry (ms)", rounds, "dispatch_ms",
               "dispatch_cpu_ms", goal=("<=", 2.0)),
        ms_row("beat", "beat idle tick (ms)", rounds, "idle_tick_ms", "idle_tick_cpu_ms",
               goal=("<=", 10.0)),
    ]  # fmt: skip
