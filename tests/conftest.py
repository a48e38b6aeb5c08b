from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.celery_app import app as celery_app
from tests.proxy import TcpProxy
from tests.worker import WorkerProcess, purge_queue


@pytest.fixture
def celery_queue(settings) -> str:
    """A queue of the test's own; tasks sent during the test go there."""
    queue = f"djops-test-{uuid.uuid4().hex[:10]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    celery_app.conf.task_default_queue = queue
    yield queue
    purge_queue(queue)
    celery_app.conf.task_default_queue = "djops-tests"


@pytest.fixture
def start_worker(transactional_db, celery_queue) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker subprocesses on the test database and the test's queue."""
    started: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        worker = WorkerProcess(queue=celery_queue, **options)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    return start_worker()


@pytest.fixture
def db_proxy() -> Iterator[TcpProxy]:
    """A TCP proxy between worker subprocesses and PostgreSQL that the test can cut."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): an SQLite file cannot go down")
    settings_dict = connection.settings_dict
    proxy = TcpProxy(settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432))
    yield proxy.start()
    proxy.stop()
