"""Measure ``replay``: bulk replay of dead letters against raw enqueue of the same messages.

Raw enqueue is an ``app.send_task`` loop over messages already in memory, on one producer
(the cheapest a caller can do). The replay is ``replay()`` of every row: conditional claim
in chunks, ``bulk_create`` of the Replay rows, publish after commit on one producer. Each
round creates its dead letters afresh; the two run in alternating order. The ratio is
replay throughput / raw throughput; the CPU ratio compares this process's CPU per message
(the database's own work is not in it).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.context import Context
from bench.report import ratio_row
from bench.workers import ordered, purge_and_delete

NAME = "replay"
TASK = "bench.replayed"


def create_dead_letters(count: int, queue: str) -> list[Any]:
    from django.utils import timezone

    from djcelery_ops.models import DeadLetter

    now = timezone.now()
    rows = [
        DeadLetter(
            task_id=str(uuid.uuid4()), task_name=TASK, args=[n],
            kwargs={"amount": n % 100}, options={"queue": queue, "headers": {"t": "x"}},
            queue=queue, reason="exception", fingerprint="f" * 40,
            first_failed_at=now, last_failed_at=now,
        )
        for n in range(count)
    ]  # fmt: skip
    DeadLetter.objects.bulk_create(rows, batch_size=5000)
    return list(DeadLetter.objects.filter(task_name=TASK).order_by("pk"))


def delete_dead_letters() -> None:
    from djcelery_ops.models import DeadLetter

    DeadLetter.objects.filter(task_name=TASK).delete()  # their Replay rows cascade


def run_round(context: Context, round_index: int) -> dict[str, Any]:
    from djcelery_ops.deadletter.services import publish_options

    token = uuid.uuid4().hex[:10]
    raw_queue, replay_queue = f"bench_raw_{token}", f"bench_replay_{token}"
    delete_dead_letters()
    letters = create_dead_letters(context.replay_count, replay_queue)
    messages = [
        (letter.task_name, letter.args, letter.kwargs, publish_options(letter, queue=raw_queue))
        for letter in letters
    ]
    results: dict[str, Any] = {}
    try:
        for name in ordered(["raw", "replay"], round_index):
            run = _raw if name == "raw" else _replay
            results[name] = _timed(run, context, messages)
    finally:
        purge_and_delete(context.app, [raw_queue, replay_queue])
        delete_dead_letters()
    return results


def _timed(run: Any, context: Context, messages: list[Any]) -> dict[str, Any]:
    count = len(messages)
    cpu, started = time.process_time(), time.perf_counter()
    run(context, messages)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "seconds": seconds,
        "per_second": count / seconds,
        "cpu_ms_per_task": cpu * 1000 / count,
    }


def _raw(context: Context, messages: list[Any]) -> None:
    app = context.app
    with app.producer_or_acquire() as producer:
        for name, args, kwargs, message_options in messages:
            app.send_task(name, args, kwargs, producer=producer, **message_options)


def _replay(context: Context, messages: list[Any]) -> None:
    from djcelery_ops.deadletter.services import replay
    from djcelery_ops.models import DeadLetter

    outcome = replay(DeadLetter.objects.filter(task_name=TASK), by="bench", reason="bench",
                     app=context.app)  # fmt: skip
    if outcome.done != len(messages):
        raise RuntimeError(f"replay published {outcome.done} of {len(messages)}: {outcome}")


def rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        ratio_row(
            "replay", "bulk replay / raw send_task", rounds, "replay", "raw", goal=(">=", 0.90)
        )
    ]
