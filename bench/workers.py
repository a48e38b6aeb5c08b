"""One worker mode timed: fill a queue, start a prefork worker, time it until all ran.

Each mode fills its own queue (``bench_<token>``) with N messages first, then starts
``celery -A bench.worker_app worker`` on it and times from ``worker_ready`` until the
counter file holds N bytes (see ``bench.worker_app``): start-up is left out, and so is the
enqueue. CPU per task is the CPU time (user + system) of the worker's main process and its
pool children over the same stretch, read from ``/proc`` (Linux; None elsewhere).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Mode:
    """A task to fill the queue with, the arguments of message n, extra worker env."""

    task: str
    args: Callable[[str, int], tuple[Any, ...]] = lambda token, n: (n,)
    env: dict[str, str] = field(default_factory=dict)


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU of one process, or None if it is gone (or not on Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for thread in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (thread / "children").read_text().split()]
        except OSError:
            continue
    return found


def worker_cpu_seconds(pid: int) -> float | None:
    """CPU of the worker's main process and its pool children, or None off Linux."""
    total = process_cpu_seconds(pid)
    if total is None:
        return None
    for child in children_of(pid):
        total += process_cpu_seconds(child) or 0.0
    return total


def purge_and_delete(app: Any, queues: Iterable[str]) -> None:
    with app.connection_for_write() as conn:
        for queue in queues:
            channel = conn.channel()
            try:
                channel.queue_purge(queue)
                channel.queue_delete(queue)
                channel.exchange_delete(queue)  # send_task(queue=...) declared one of that name
            except conn.channel_errors:
                pass  # never declared: nothing to remove
            finally:
                channel.close()


def fill(app: Any, mode: Mode, queue: str, count: int, token: str) -> None:
    with app.producer_or_acquire() as producer:
        for n in range(count):
            app.send_task(mode.task, mode.args(token, n), queue=queue, producer=producer)


def run_mode(app: Any, mode: Mode, count: int, concurrency: int, timeout: float) -> dict[str, Any]:
    """Seconds, tasks per second and worker CPU ms per task for ``count`` tasks of ``mode``."""
    token = uuid.uuid4().hex[:10]
    queue = f"bench_{token}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    counter, ready = tmp / "counter", tmp / "ready"
    counter.touch()
    fill(app, mode, queue, count, token)
    env = {
        **os.environ,
        "BENCH_COUNTER": str(counter),
        "BENCH_READY": str(ready),
        "DJCELERY_OPS_TEST_QUEUE": queue,
        # Without it Celery's Django fixup opens a database connection per task (README).
        "DJCELERY_OPS_TEST_DB_REUSE_MAX": "1000",
        "PYTHONUNBUFFERED": "1",
        **mode.env,
    }
    command = [
        sys.executable, "-m", "celery", "-A", "bench.worker_app", "worker", "-P", "prefork",
        "-c", str(concurrency), "-Q", queue, "-n", f"{queue}@%h", "--without-gossip",
        "--without-mingle", "--without-heartbeat", "-l", "WARNING",
    ]  # fmt: skip
    log_path = tmp / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            result = _time_worker(worker, counter, ready, count, timeout, log_path)
        finally:
            _stop(worker)
            purge_and_delete(app, [queue])
    shutil.rmtree(tmp)  # kept when the worker failed: its log says why
    return result | {"token": token}


def _time_worker(
    worker: subprocess.Popen[bytes], counter: Path, ready: Path, count: int, timeout: float,
    log_path: Path,
) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready.exists():
        _check(worker, deadline, log_path)
        time.sleep(0.005)
    started = float(ready.read_text())
    cpu_before = worker_cpu_seconds(worker.pid)
    while counter.stat().st_size < count:
        _check(worker, deadline, log_path)
        time.sleep(0.005)
    done = time.monotonic()
    cpu_after = worker_cpu_seconds(worker.pid)
    result: dict[str, Any] = {"seconds": done - started, "per_second": count / (done - started)}
    if cpu_before is not None and cpu_after is not None:
        result["cpu_ms_per_task"] = (cpu_after - cpu_before) * 1000 / count
    return result


def _check(worker: subprocess.Popen[bytes], deadline: float, log_path: Path) -> None:
    if worker.poll() is not None:
        raise RuntimeError(f"the worker exited with {worker.returncode}; see {log_path}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"the worker did not finish in time; see {log_path}")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)


def run_modes(
    context: Any, modes: dict[str, Mode], round_index: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each of ``modes`` run on ``context.tasks`` tasks, in this round's order."""
    for name in ordered(list(modes), round_index):
        yield (
            name,
            run_mode(context.app, modes[name], context.tasks, context.concurrency, context.timeout),
        )


def ordered(names: list[str], round_index: int) -> list[str]:
    """Baseline first in even rounds, last in odd ones."""
    return names if round_index % 2 == 0 else names[::-1]


def wait_for(count: Callable[[], int], expected: int, timeout: float) -> float:
    """Seconds until ``count()`` reaches ``expected``; raises after ``timeout``."""
    started = time.monotonic()
    while count() < expected:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {count()} of {expected} rows after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started
