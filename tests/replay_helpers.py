"""Helpers of the replay tests: read what was really published to the broker."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from tests.celery_app import app
from tests.utils import wait_until


def drain(queue: str) -> list[dict[str, Any]]:
    """Take every message out of ``queue`` (any broker; none when it does not exist):
    headers, args, kwargs, properties."""
    messages = []
    with app.connection_for_write() as conn, contextlib.suppress(*conn.channel_errors):
        bound = app.amqp.queues[queue](conn.default_channel)  # kombu messages, AMQP too
        while (message := bound.get(no_ack=True)) is not None:
            args, kwargs, _embed = message.decode()
            messages.append(
                {
                    "headers": dict(message.headers),
                    "args": args,
                    "kwargs": kwargs,
                    "priority": message.properties.get("priority"),
                }
            )
    return messages


def executions(keys: list[str]) -> tuple[int, int, int]:
    """(executed once, doubled, lost) of the replayed tasks (``Effect`` rows per key), once
    every replay has an outcome."""
    from djcelery_ops.models import Replay
    from tests.testapp.models import Effect

    wait_until(
        lambda: not Replay.objects.filter(outcome=Replay.Outcome.PENDING).exists(),
        timeout=120, what="every replay to finish",
    )  # fmt: skip
    counts = Counter(Effect.objects.values_list("key", flat=True))
    once = sum(1 for key in keys if counts[key] == 1)
    doubled = sum(1 for key in keys if counts[key] > 1)
    lost = sum(1 for key in keys if counts[key] == 0)
    return once, doubled, lost
