"""Helpers of the replay tests: read what was really published to the broker."""

from __future__ import annotations

import contextlib
from typing import Any

from tests.celery_app import app


def drain(queue: str) -> list[dict[str, Any]]:
    """Take every message out of ``queue``: headers, args, kwargs, properties."""
    messages = []
    with app.connection_for_write() as conn, contextlib.suppress(*conn.channel_errors):
        channel = conn.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
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
