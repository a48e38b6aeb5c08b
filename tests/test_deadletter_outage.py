"""PostgreSQL unreachable at the moment a failure must be recorded: nothing is lost."""

from __future__ import annotations

import pytest
from django.db import connection

from djcelery_ops.models import DeadLetter
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.postgres]


def test_database_down_when_failure_is_recorded__spooled_then_ingested(
    start_worker, db_proxy, tmp_path, settings
):
    spool = tmp_path / "spool"
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(spool)
    url = f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{db_proxy.port}/postgres"
    start_worker(
        env={"DATABASE_URL": url, "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR": str(spool)},
        concurrency=1,
    )
    go = tmp_path / "go"
    lost = tasks.ops_fail_when.delay("during-outage", str(go))
    wait_until(lambda: Effect.objects.filter(key="during-outage").exists(), what="task start")

    db_proxy.stop()  # the database is gone for the worker...
    go.touch()  # ...when the task fails
    spooled = wait_until(lambda: list(spool.glob("*.json")), what="the record in the spool")
    assert lost.id in spooled[0].read_text()
    assert not DeadLetter.objects.filter(task_id=lost.id).exists()

    db_proxy.start()  # same port: the database is back
    later = tasks.ops_raise.delay("after the outage")
    wait_until(
        lambda: DeadLetter.objects.filter(task_id__in=[lost.id, later.id]).count() == 2,
        what="both dead letters in the database",
    )
    letter = DeadLetter.objects.get(task_id=lost.id)
    assert letter.exception_message == "failed after go for during-outage"
    assert letter.task_name == "tests.testapp.tasks.ops_fail_when"
    assert list(spool.glob("*.json")) == []
