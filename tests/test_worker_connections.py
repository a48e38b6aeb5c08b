"""A worker that keeps its database connection across tasks (``CELERY_DB_REUSE_MAX``, as
the README's settings do) replaces one the server dropped, instead of failing every task
until Celery's next scheduled close."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.postgres]


def test_dropped_connection__the_next_task_reconnects(start_worker, db_proxy):
    url = f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{db_proxy.port}/postgres"
    worker = start_worker(
        env={"DATABASE_URL": url, "DJCELERY_OPS_TEST_DB_REUSE_MAX": "1000"}, concurrency=1
    )
    tasks.record_effect.delay("before")
    wait_until(lambda: Effect.objects.filter(key="before").exists(), what="the first task")

    db_proxy.stop()  # every open connection is reset: the worker's kept one is dead
    db_proxy.start()  # the database is back at once, on the same port

    # A task meets the dead connection and handles the error itself: nothing fails, so no
    # dead-letter capture (which replaces a broken connection before writing) runs.
    gave_up = tasks.record_effect_or_give_up.delay("meets the dead connection")
    wait_until(
        lambda: f"{gave_up.id}] succeeded" in worker.log() and "'gave up'" in worker.log(),
        what="the task that met the dead connection",
    )
    # Celery would close the kept connection only after 1,000 tasks: every task until then
    # failed on it. The next task's task_prerun replaces it.
    tasks.record_effect.delay("after")
    wait_until(lambda: Effect.objects.filter(key="after").exists(), what="the next task")
    assert not Effect.objects.filter(key="meets the dead connection").exists()
