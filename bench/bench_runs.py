"""Throughput of a prefork worker: plain Celery, OpsTask with run recording, and
django-celery-results' database backend, on the same broker and database, in one run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wtrunsbench \
    CELERY_BROKER_URL=redis://127.0.0.1:6379/10 \
    .venv/bin/python bench/bench_runs.py [--tasks 2000] [--rounds 1] [--concurrency 2]

Each mode fills its own queue with N no-op tasks first, then starts a worker
(``celery -A bench.bench_runs worker``) and times from ``worker_ready`` until the tasks
have all run (each appends one byte to a counter file: the same tiny cost in every mode).
For the recording mode it also reports when the last run reached the database.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from celery import Celery  # noqa: E402
from celery.signals import worker_init, worker_process_init, worker_ready  # noqa: E402

from djcelery_ops.task.base import OpsTask  # noqa: E402

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.result_backend = os.environ.get("BENCH_RESULT_BACKEND") or None
app.conf.worker_prefetch_multiplier = 4

_counter_fd: int | None = None


def _count() -> None:
    """One byte per finished task, appended atomically: the file size is the count."""
    global _counter_fd
    if _counter_fd is None:
        _counter_fd = os.open(os.environ["BENCH_COUNTER"], os.O_WRONLY | os.O_APPEND)
    os.write(_counter_fd, b".")


@app.task(name="bench.plain", acks_late=True, ignore_result=True)
def plain() -> None:
    _count()


@app.task(name="bench.plain_result", acks_late=True)
def plain_result() -> None:
    _count()


@app.task(name="bench.ops", base=OpsTask, ignore_result=True)
def ops() -> None:
    _count()


@worker_init.connect
@worker_process_init.connect
def _quiet_logs(**kwargs: object) -> None:
    # The worker runs at -l WARNING; the test settings log djcelery_ops events at INFO.
    logging.getLogger("djcelery_ops").setLevel(logging.WARNING)


@worker_ready.connect
def _announce_ready(**kwargs: object) -> None:
    ready = Path(os.environ["BENCH_READY"])
    ready.with_suffix(".tmp").write_text(str(time.monotonic()))
    ready.with_suffix(".tmp").replace(ready)  # the bench never reads a half-written file


MODES = {
    # name: (task, extra worker environment)
    "plain celery (acks_late)": ("bench.plain", {}),
    "OpsTask, recording off": ("bench.ops", {"BENCH_RUNS_ENABLED": "0"}),
    "OpsTask + run recording": ("bench.ops", {}),
    "django-celery-results db": ("bench.plain_result", {"BENCH_RESULT_BACKEND": "django-db"}),
}

if os.environ.get("BENCH_RUNS_ENABLED") == "0":
    from django.conf import settings

    settings.DJCELERY_OPS_RUNS_ENABLED = False


def run_mode(name: str, tasks: int, concurrency: int) -> dict[str, float]:
    from djcelery_ops.models import TaskRun

    task_name, extra_env = MODES[name]
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    counter, ready = tmp / "counter", tmp / "ready"
    counter.touch()
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            app.send_task(task_name, queue=queue, producer=producer)
    env = {
        **os.environ,
        "BENCH_COUNTER": str(counter),
        "BENCH_READY": str(ready),
        "DJCELERY_OPS_TEST_QUEUE": queue,
        **extra_env,
    }
    command = [
        sys.executable, "-m", "celery", "-A", "bench.bench_runs", "worker", "-P", "prefork",
        "-c", str(concurrency), "-Q", queue, "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-l", "WARNING",
    ]  # fmt: skip
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not ready.exists():
            if worker.poll() is not None:
                raise SystemExit(f"worker exited; see {tmp / 'worker.log'}")
            time.sleep(0.005)
        started = float(ready.read_text())
        while counter.stat().st_size < tasks:
            time.sleep(0.005)
        done = time.monotonic()
        result = {"seconds": done - started, "per_second": tasks / (done - started)}
        if name == "OpsTask + run recording":
            recorded = TaskRun.objects.filter(task_name="bench.ops", state="succeeded")
            while recorded.count() < tasks:
                time.sleep(0.05)
            result["recorded_after"] = time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    return result


def clean_up() -> None:
    from django_celery_results.models import TaskResult

    from djcelery_ops.models import TaskRun

    TaskRun.objects.filter(task_name__startswith="bench.").delete()
    TaskResult.objects.filter(task_name__startswith="bench.").delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per mode (2000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the best one counts")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    options = parser.parse_args()

    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    call_command("migrate", verbosity=0)
    clean_up()
    print(
        f"{options.tasks} tasks per mode, prefork -c {options.concurrency}, "
        f"broker {app.conf.broker_url.split('@')[-1]}, database {connection.vendor} "
        f"{connection.settings_dict['NAME']}, best of {options.rounds}"
    )
    best: dict[str, dict[str, float]] = {}
    for _round in range(options.rounds):
        for name in MODES:
            result = run_mode(name, options.tasks, options.concurrency)
            if name not in best or result["per_second"] > best[name]["per_second"]:
                best[name] = result
            clean_up()
    baseline = best["plain celery (acks_late)"]["per_second"]
    print(f"{'mode':<28}{'tasks/s':>10}{'ratio':>8}  notes")
    for name, result in best.items():
        note = ""
        if "recorded_after" in result:
            note = f"all runs in the database {result['recorded_after']:.2f} s after start"
        ratio = result["per_second"] / baseline
        print(f"{name:<28}{result['per_second']:>10.0f}{ratio:>8.2f}  {note}")


if __name__ == "__main__":
    main()
