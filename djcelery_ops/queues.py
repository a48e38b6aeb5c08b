"""Queue depths: messages waiting in each broker queue, measured in one broker visit and
reused for ``DJCELERY_OPS_QUEUE_DEPTH_CACHE_SECONDS`` (a scrape every few seconds must not
cost a broker round-trip per queue).

Redis: the length of each queue's lists (kombu keeps one list per priority step), all in
one pipeline. RabbitMQ (and other AMQP brokers): a passive ``queue_declare`` per queue,
which creates nothing and answers the ready message count (unacked messages are not
counted). Other kombu transports: their own ``_size``. A queue the broker does not know
has depth 0 on Redis (an empty list does not exist there) and is left out on RabbitMQ.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.services import celery_app

CONNECT_TIMEOUT_SECONDS = 2
_lock = threading.Lock()
_cache: dict[str, Any] = {}


def queue_names(app: Any = None) -> list[str]:
    """The queues to measure: the setting, else the app's configured queues."""
    if ops_settings.QUEUE_DEPTH_QUEUES is not None:
        return sorted(set(ops_settings.QUEUE_DEPTH_QUEUES))
    app = app or celery_app()
    return sorted({*app.amqp.queues.keys(), app.conf.task_default_queue})


def _redis_depths(channel: Any, names: list[str]) -> dict[str, int]:
    steps = list(channel.priority_steps)
    with channel.conn_or_acquire() as client, client.pipeline() as pipe:
        for name in names:
            for priority in steps:
                pipe.llen(channel._q_for_pri(name, priority))
        sizes = pipe.execute()
    return {
        name: sum(int(size) for size in sizes[i * len(steps) : (i + 1) * len(steps)])
        for i, name in enumerate(names)
    }


def _amqp_depths(connection: Any, names: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    channel = connection.channel()
    try:
        for name in names:
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except connection.channel_errors:  # NOT_FOUND closes the channel
                channel = connection.channel()
    finally:
        channel.close()
    return depths


def measure_depths(names: list[str], app: Any = None) -> dict[str, int]:
    """Ask the broker now, one connection for every queue; raises what the broker raises."""
    app = app or celery_app()
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_SECONDS)
        if connection.transport.driver_type == "amqp":
            return _amqp_depths(connection, names)
        channel = connection.default_channel
        if connection.transport.driver_type == "redis":
            return _redis_depths(channel, names)
        return {name: int(channel._size(name)) for name in names}


def queue_depths(*, fresh: bool = False, app: Any = None) -> dict[str, int]:
    """Depth of each queue, measured at most once per cache period in this process
    (``fresh``: measure now). Raises what the broker raises; nothing is cached then."""
    names = queue_names(app)
    seconds = float(ops_settings.QUEUE_DEPTH_CACHE_SECONDS)
    with _lock:
        cached = _cache.get("depths")
        key = (tuple(names), id(app))
        if not fresh and cached and cached[0] == key and time.monotonic() - cached[1] < seconds:
            return dict(cached[2])
        depths = measure_depths(names, app)
        _cache["depths"] = (key, time.monotonic(), depths)
    return dict(depths)
