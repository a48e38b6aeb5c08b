"""A whole failure group replayed or discarded from the admin by a worker: time, memory.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dlbench \
    CELERY_BROKER_URL=redis://127.0.0.1:6379/12 \
    .venv/bin/python bench/bench_bulk_action.py --action discard [--reset]

On the rows ``bench/seed_dead_letters.py`` seeded (its biggest group: half of the rows),
it confirms the group's replay or discard in the admin (Django's test client, as a
superuser), which hands it to a worker (``celery -A tests.celery_app worker -c 1`` on a
queue of its own, started here); then it prints the action's progress every 5 s as its
admin page shows it, and at the end the request's time, the action's wall time and rows
per second, and the peak resident memory (``VmHWM``) of the worker's pool child and main
process. ``--reset`` first puts the group back to pending (its replays, discards and bulk
actions deleted), so runs can follow each other. Replays go to the seeded rows' queue,
``default``, which nobody consumes: the broker's database is flushed at the end, so give
this script a Redis database of its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
QUEUE = f"bench_bulk_{uuid.uuid4().hex[:8]}"
os.environ["DJCELERY_OPS_TEST_QUEUE"] = QUEUE  # the settings route the bulk task there

from bench.seed_dead_letters import BIG_EXCEPTION, BIG_TASK  # noqa: E402
from bench.seed_runs import admin_client, setup_on_postgresql  # noqa: E402
from bench.workers import children_of  # noqa: E402


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset(fingerprint: str) -> None:
    from djcelery_ops.models import BulkAction, DeadLetter, Discard, Replay

    started = time.monotonic()
    Replay.objects.all().delete()
    Discard.objects.all().delete()
    BulkAction.objects.all().delete()
    rows = DeadLetter.objects.filter(fingerprint=fingerprint).exclude(status="pending")
    print(f"reset: {rows.update(status='pending'):,} rows back to pending", end=" ")
    print(f"in {time.monotonic() - started:.0f} s")


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-P", "prefork",
        "-c", "1", "-Q", QUEUE, "-n", f"{QUEUE}@%h", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-l", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--action", choices=["replay", "discard"], default="discard")
    parser.add_argument("--reset", action="store_true", help="the group back to pending first")
    options = parser.parse_args()
    setup_on_postgresql("bench_bulk_action.py", bench_named=True)
    from django.urls import reverse

    from djcelery_ops.conf import ops_settings
    from djcelery_ops.models import BulkAction, DeadLetter
    from tests.celery_app import app

    first = DeadLetter.objects.filter(task_name=BIG_TASK, exception_class=BIG_EXCEPTION).first()
    if first is None:
        raise SystemExit("no seeded group: run bench/seed_dead_letters.py --rows N first")
    if options.reset:
        reset(first.fingerprint)
    log = REPO / "var" / "bench" / f"{QUEUE}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    worker = start_worker(log)
    try:
        client = admin_client()
        url = reverse("admin:djcelery_ops_deadletter_group_action", args=[options.action])
        before = time.monotonic()
        response = client.post(
            f"{url}?fingerprint={first.fingerprint}", {"post": "yes", "reason": "bench"}
        )
        request_ms = (time.monotonic() - before) * 1000
        assert response.status_code == 302, response.content[:2000]
        action = BulkAction.objects.get()
        peak_child = peak_main = 0
        while not action.finished:
            time.sleep(5)
            action.refresh_from_db()
            for child in children_of(worker.pid):
                peak_child = max(peak_child, peak_kib(child))
            peak_main = max(peak_main, peak_kib(worker.pid))
            print(f"{action.status}: {action.done:,} done of {action.total or 0:,}, "
                  f"{action.skipped:,} skipped, {action.batches} batches", flush=True)  # fmt: skip
        assert action.started_at and action.finished_at
        seconds = (action.finished_at - action.started_at).total_seconds()
        print(
            f"\n{options.action} of a group of {action.total:,} rows from the admin: "
            f"request {request_ms:.0f} ms; worker {seconds:.0f} s, "
            f"{(action.done + action.skipped) / seconds:,.0f} rows/s, {action.batches} batches "
            f"of {ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE}, slices of "
            f"{ops_settings.DEAD_LETTER_BULK_SLICE_SECONDS:.0f} s; status {action.status}; "
            f"peak memory: pool child {peak_child / 1024:.0f} MB, main {peak_main / 1024:.0f} MB"
        )
    finally:
        worker.terminate()
        worker.wait(60)
        with app.connection_for_write() as connection:
            client = connection.default_channel.client
            if hasattr(client, "flushdb"):
                client.flushdb()  # the replays nobody consumes (a database of its own)


if __name__ == "__main__":
    main()
