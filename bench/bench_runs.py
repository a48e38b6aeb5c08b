"""Throughput of a prefork worker: plain Celery, OpsTask with run recording, and
django-celery-results' database backend, on the same broker and database, in one run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wtrunsbench \
    CELERY_BROKER_URL=redis://127.0.0.1:6379/10 \
    .venv/bin/python bench/bench_runs.py [--tasks 2000] [--rounds 1] [--concurrency 2]

Each mode fills its own queue with N no-op tasks first, then starts a worker
(``celery -A bench.bench_runs worker``) and times from ``worker_ready`` until the tasks
have all run (each appends one byte to a counter file: the same tiny cost in every mode).
For the recording mode it also reports when the last run reached the database.

Wall-clock throughput on a shared two-core machine moves by ±10% from run to run, so the
bench also reads the machine's busy CPU time (``/proc/stat``: user, nice, system, irq,
softirq; not idle, iowait or steal) over the same stretch: CPU per task counts the worker,
the broker and the database together and moves much less. Modes run in a different order
each round; ratios are the median over rounds of each round's own ratio.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
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


def busy_cpu_seconds() -> float | None:
    """CPU time the whole machine spent busy since boot, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


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
        cpu_before = busy_cpu_seconds()
        while counter.stat().st_size < tasks:
            time.sleep(0.005)
        done = time.monotonic()
        cpu_after = busy_cpu_seconds()
        result = {"seconds": done - started, "per_second": tasks / (done - started)}
        if cpu_before is not None and cpu_after is not None:
            result["cpu_ms"] = (cpu_after - cpu_before) * 1000 / tasks
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
    names = list(MODES)
    rounds: list[dict[str, dict[str, float]]] = []
    for number in range(options.rounds):
        results: dict[str, dict[str, float]] = {}
        for name in names[number % len(names) :] + names[: number % len(names)]:
            results[name] = run_mode(name, options.tasks, options.concurrency)
            clean_up()
        rounds.append(results)
    report(rounds)


def report(rounds: list[dict[str, dict[str, float]]]) -> None:
    plain = "plain celery (acks_late)"
    print(
        f"{'mode':<28}{'tasks/s':>9}{'ratio':>7}{'(min-max)':>12}"
        f"{'CPU ms/task':>13}{'ratio':>7}  notes"
    )
    for name in MODES:
        ratios = [r[name]["per_second"] / r[plain]["per_second"] for r in rounds]
        best = max(r[name]["per_second"] for r in rounds)
        line = f"{name:<28}{best:>9.0f}{statistics.median(ratios):>7.2f}"
        line += f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>12}"
        if all("cpu_ms" in r[name] for r in rounds):
            cpu = statistics.median(r[name]["cpu_ms"] for r in rounds)
            # Throughput follows CPU per task inversely: report plain/mode, like tasks/s.
            cpu_ratio = statistics.median(r[plain]["cpu_ms"] / r[name]["cpu_ms"] for r in rounds)
            line += f"{cpu:>13.2f}{cpu_ratio:>7.2f}"
        recorded = [r[name]["recorded_after"] for r in rounds if "recorded_after" in r[name]]
        if recorded:
            line += f"  all runs in the database {max(recorded):.2f} s after start (worst)"
        print(line)
    print("tasks/s: best round; ratio: median of the rounds' ratios to plain Celery (min-max);")
    print("CPU ratio: plain Celery's busy CPU per task / this mode's (1.00 = as cheap).")


if __name__ == "__main__":
    main()
