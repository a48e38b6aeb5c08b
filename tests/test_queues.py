"""Queue depths on the real brokers: Redis (lists, one per priority step) and RabbitMQ
(passive declare). RabbitMQ is shared: the test uses queue names of its own and deletes
them."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from celery import Celery
from kombu import Exchange, Queue

from djcelery_ops.queues import measure_depths, queue_depths, queue_names

RABBITMQ_URL = os.environ.get(
    "DJCELERY_OPS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"
)


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def fill(app: Celery, queue: str, count: int, **options) -> None:
    for number in range(count):
        app.send_task("tests.testapp.tasks.ops_add", args=[number, 1], queue=queue, **options)


@pytest.fixture
def rabbitmq_app(monkeypatch):
    if not reachable("127.0.0.1", 5672):
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    # Celery's broker_url prefers the CELERY_BROKER_URL environment variable (CI sets it).
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = Celery("djops-queue-depths", broker=RABBITMQ_URL, set_as_current=False)
    names = [f"djops-metrics-depth-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    app.conf.task_queues = [Queue(name, Exchange(name), routing_key=name) for name in names]
    app.conf.task_default_queue = names[0]
    yield app, names
    with app.connection_for_write() as connection:
        for name in names:
            connection.default_channel.queue_delete(name)


def test_rabbitmq__passive_declare_counts_ready_messages(rabbitmq_app, settings):
    app, (full, empty) = rabbitmq_app
    missing = f"djops-metrics-depth-missing-{uuid.uuid4().hex[:8]}"
    fill(app, full, 3)
    with app.connection_for_write() as connection:  # declared, never filled
        Queue(empty, Exchange(empty), routing_key=empty)(connection.default_channel).declare()
    assert queue_names(app) == sorted([full, empty])
    with app.connection_for_read() as connection:
        assert connection.transport.driver_type == "amqp"
    assert measure_depths([full, empty, missing], app) == {full: 3, empty: 0}
    connection = app.connection_for_write()
    with connection, pytest.raises(connection.channel_errors):  # the passive declare made none
        connection.default_channel.queue_declare(queue=missing, passive=True)


def test_rabbitmq__cached_until_asked_fresh(rabbitmq_app, settings):
    app, (full, _empty) = rabbitmq_app
    settings.DJCELERY_OPS_QUEUE_DEPTH_QUEUES = [full]
    settings.DJCELERY_OPS_QUEUE_DEPTH_CACHE_SECONDS = 3600
    fill(app, full, 1)
    assert queue_depths(app=app, fresh=True) == {full: 1}
    fill(app, full, 2)
    assert queue_depths(app=app) == {full: 1}  # no broker visit
    assert queue_depths(app=app, fresh=True) == {full: 3}


def test_redis__every_priority_list_counts():
    from tests.celery_app import app
    from tests.worker import purge_queue

    if not str(app.conf.broker_url).startswith("redis"):
        pytest.skip("needs CELERY_BROKER_URL=redis://...")
    queue = f"djops-metrics-depth-{uuid.uuid4().hex[:8]}"
    try:
        fill(app, queue, 2)
        fill(app, queue, 3, priority=6)  # kombu keeps these in a second list
        assert measure_depths([queue, f"{queue}-missing"], app) == {queue: 5, f"{queue}-missing": 0}
    finally:
        purge_queue(queue)
