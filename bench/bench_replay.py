"""Bulk replay of dead letters against raw enqueue of the same messages, in one run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wtreplay \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/11 \\
    .venv/bin/python bench/bench_replay.py --count 100000

Raw enqueue is an ``app.send_task`` loop over messages already in memory, on one producer
(the cheapest a caller can do). The replay is ``replay()`` of every row: conditional claim
in chunks, ``bulk_create`` of the Replay rows, publish after commit on one producer.
The ratio is replay throughput / raw throughput (goal >= 0.8). The database named in
DATABASE_URL is created if missing and migrated; the bench's tables are emptied first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def ensure_database() -> None:
    import dj_database_url
    import psycopg

    config = dj_database_url.parse(os.environ["DATABASE_URL"])
    maintenance = psycopg.connect(
        host=config["HOST"], port=config["PORT"] or 5432, user=config["USER"],
        password=config["PASSWORD"] or None, dbname="postgres", autocommit=True,
    )  # fmt: skip
    with maintenance:
        exists = maintenance.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]
        ).fetchone()
        if not exists:
            maintenance.execute(f'CREATE DATABASE "{config["NAME"]}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    options = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to PostgreSQL and CELERY_BROKER_URL to Redis.")
    ensure_database()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from djcelery_ops.deadletter.services import publish_options, replay
    from djcelery_ops.models import DeadLetter
    from tests.celery_app import app
    from tests.worker import purge_queue

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE djcelery_ops_replay, djcelery_ops_discard, djcelery_ops_deadletter CASCADE"
        )
    raw_queue, replay_queue = "djops-bench-raw", "djops-bench-replay"
    now = timezone.now()
    rows = [
        DeadLetter(
            task_id=str(uuid.uuid4()), task_name="shop.tasks.charge", args=[n],
            kwargs={"amount": n % 100}, options={"queue": replay_queue, "headers": {"t": "x"}},
            queue=replay_queue, reason="exception", fingerprint="f" * 40,
            first_failed_at=now, last_failed_at=now,
        )
        for n in range(options.count)
    ]  # fmt: skip
    DeadLetter.objects.bulk_create(rows, batch_size=5000)
    letters = list(DeadLetter.objects.order_by("pk"))
    messages = []
    for letter in letters:
        message_options = publish_options(letter, queue=raw_queue)
        messages.append((letter.task_name, letter.args, letter.kwargs, message_options))
    for queue in (raw_queue, replay_queue):
        purge_queue(queue)

    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for name, args, kwargs, message_options in messages:
            app.send_task(name, args, kwargs, producer=producer, **message_options)
    raw_seconds = time.perf_counter() - started
    purge_queue(raw_queue)

    started = time.perf_counter()
    outcome = replay(DeadLetter.objects.all(), by="bench", reason="bench", app=app)
    replay_seconds = time.perf_counter() - started
    purge_queue(replay_queue)
    assert outcome.done == options.count, outcome

    raw_rate, replay_rate = options.count / raw_seconds, options.count / replay_seconds
    print(f"messages        {options.count}")
    print(f"raw send_task   {raw_seconds:8.2f} s  {raw_rate:9.0f} msg/s")
    print(f"replay()        {replay_seconds:8.2f} s  {replay_rate:9.0f} msg/s")
    print(f"ratio           {replay_rate / raw_rate:8.2f}  (replay / raw throughput, goal >= 0.8)")


if __name__ == "__main__":
    main()
