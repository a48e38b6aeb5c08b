"""Where the time goes per task: cProfile of a solo-pool worker running N tasks of a mode.

    python -m bench.profile_task --broker redis://127.0.0.1:6379/5 \\
        --database postgres://postgres@127.0.0.1:5432/djops_bench --mode ops [--tasks 3000]

Modes are the task names of ``bench.worker_app`` without ``bench.`` (plain, ops, ops_fail,
plain_fail, idempotent_atomic, idempotent_lease). The solo pool runs the main process's
work (receiving, acking) and the task's trace in one process, so one profile shows both;
it is taken from ``worker_ready`` to shutdown, in CPU time (``time.process_time``): on
a busy machine wall time is mostly waiting for a core. Prints the functions with the most own
time and the most cumulative time, in microseconds per task (cProfile's own overhead
included: compare modes with each other, not with ``python -m bench``'s wall times).
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.cli import REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL"))
    parser.add_argument("--database", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--mode", default="ops")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--output", type=Path, default=None, help="keep the .prof file here")
    options = parser.parse_args()
    from bench import context
    from bench.workers import Mode, fill, purge_and_delete

    context.check_database_name(options.database)
    context.configure(options.broker, options.database)
    ctx = context.setup(options.database, 1, smoke=True)
    token, queue = uuid.uuid4().hex[:10], f"bench_profile_{uuid.uuid4().hex[:8]}"
    keyed = options.mode.startswith("idempotent")
    mode = Mode(f"bench.{options.mode}", (lambda t, n: (t, n)) if keyed else (lambda t, n: (n,)))
    fill(ctx.app, mode, queue, options.tasks, token)
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    counter, output = tmp / "counter", options.output or tmp / "worker.prof"
    counter.touch()
    env = {**os.environ, "BENCH_COUNTER": str(counter), "BENCH_PROFILE": str(output),
           "DJCELERY_OPS_TEST_DB_REUSE_MAX": "1000", "DJCELERY_OPS_TEST_QUEUE": queue}  # fmt: skip
    command = [sys.executable, "-m", "celery", "-A", "bench.worker_app", "worker", "-P", "solo",
               "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-l", "WARNING"]  # fmt: skip
    with (tmp / "worker.log").open("wb") as log:
        worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            while counter.stat().st_size < options.tasks:
                if worker.poll() is not None:
                    raise SystemExit(f"worker exited; see {tmp / 'worker.log'}")
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
            purge_and_delete(ctx.app, [queue])
    report(output, options.tasks, options.top)


def report(path: Path, tasks: int, top: int) -> None:
    stats = pstats.Stats(str(path))
    rows = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _cc, _nc, tt, _ct, _callers in rows.values())
    print(f"{path}: {total / tasks * 1e6:.0f} µs of CPU per task (profiled) over {tasks} tasks")
    for title, index in (("own time", 2), ("cumulative time", 3)):
        print(f"\n{'µs/task':>9} {'calls/task':>10}  function ({title})")
        ranked = sorted(rows.items(), key=lambda item: item[1][index], reverse=True)[:top]
        for (filename, line, name), values in ranked:
            where = filename.replace(str(REPO) + "/", "").split("site-packages/")[-1]
            print(f"{values[index] / tasks * 1e6:9.1f} {values[1] / tasks:10.1f}  "
                  f"{where}:{line}({name})")  # fmt: skip


if __name__ == "__main__":
    main()
