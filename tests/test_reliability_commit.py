"""Issue 19 item 7: the answer to an atomic-mode task's COMMIT is lost.

A proxy between a real worker and PostgreSQL cuts the task's connection exactly at its
COMMIT (``TcpProxy.cut_at_commit``): after the server committed (answer dropped), before
it saw the COMMIT, or after it committed with the database then unreachable. The outcome
must be told apart: succeeded, failed, or dead-lettered as ``commit_unknown``.
"""

from __future__ import annotations

import pytest
from django.db import connection

from djcelery_ops.idempotency.models import IdempotencyKey
from djcelery_ops.models import DeadLetter
from tests.test_reliability_capture import Scenario
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.reliability]


@pytest.fixture
def proxied_worker(start_worker, db_proxy, tmp_path, settings):
    """One worker whose database connections go through ``db_proxy``, in plain text."""
    spool = tmp_path / "spool"
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(spool)
    user = connection.settings_dict["USER"]
    env = {
        "DATABASE_URL": f"postgres://{user}@127.0.0.1:{db_proxy.port}/postgres?sslmode=disable",
        "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR": str(spool),
        "DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL": "1",
    }
    return start_worker(env=env, concurrency=1)


def _ended(worker, task_id: str) -> bool:
    log = worker.log()
    return f"[{task_id}] succeeded" in log or f"[{task_id}] raised" in log


def test_commit_answer_lost__committed_effect_is_verified_and_the_task_succeeds(
    proxied_worker, db_proxy, capsys
):
    scenario = Scenario("commit_answer_lost[committed]", capsys)
    cut = db_proxy.cut_at_commit(b"commit-lost-done", forward=True)
    result = tasks.idem_atomic_effect.delay("commit-lost-done")
    wait_until(cut.is_set, what="the COMMIT to be cut")
    wait_until(lambda: _ended(proxied_worker, result.id), what="the task to end")

    assert f"[{result.id}] succeeded" in proxied_worker.log()
    assert "idempotency.commit_verified" in proxied_worker.log()
    assert not DeadLetter.objects.filter(task_id=result.id).exists()
    assert Effect.objects.filter(key="commit-lost-done").count() == 1
    key = IdempotencyKey.objects.get(key="effect:commit-lost-done")
    assert (key.state, key.owner_task_id) == (IdempotencyKey.State.DONE, result.id)
    scenario.report(tasks=1, dead_letters=0, lost=0, doubled=0)


def test_commit_not_received__the_task_fails_as_before(proxied_worker, db_proxy, capsys):
    scenario = Scenario("commit_answer_lost[not_committed]", capsys)
    cut = db_proxy.cut_at_commit(b"commit-lost-never", forward=False)
    result = tasks.idem_atomic_effect.delay("commit-lost-never")
    wait_until(cut.is_set, what="the COMMIT to be cut")
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=result.id).first(), what="the dead letter"
    )
    assert letter.reason == DeadLetter.Reason.EXCEPTION
    assert letter.exception_class == "django.db.utils.OperationalError"
    assert "idempotency.commit_verified" not in proxied_worker.log()
    assert not Effect.objects.filter(key="commit-lost-never").exists()
    assert not IdempotencyKey.objects.filter(key="effect:commit-lost-never").exists()
    scenario.report(tasks=1, dead_letters=1, lost=0, doubled=letter.occurrences - 1)


def test_commit_answer_lost_and_database_gone__dead_lettered_as_commit_unknown(
    proxied_worker, db_proxy, capsys
):
    scenario = Scenario("commit_answer_lost[unverifiable]", capsys)
    cut = db_proxy.cut_at_commit(b"commit-lost-unknown", forward=True, then_stop=True)
    result = tasks.idem_atomic_effect.delay("commit-lost-unknown")
    wait_until(cut.is_set, what="the COMMIT to be cut")
    wait_until(lambda: _ended(proxied_worker, result.id), what="the task to end")
    db_proxy.start()  # the spooled record is ingested by the worker's timer
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=result.id).first(), what="the dead letter"
    )
    assert letter.reason == DeadLetter.Reason.COMMIT_UNKNOWN
    assert letter.exception_class.endswith("CommitOutcomeUnknown")
    assert "OperationalError" in letter.traceback  # the lost COMMIT, as the cause
    # It had committed: a replay would find the key done and skip it.
    assert Effect.objects.filter(key="commit-lost-unknown").count() == 1
    assert IdempotencyKey.objects.get(key="effect:commit-lost-unknown").owner_task_id == result.id
    scenario.report(tasks=1, dead_letters=1, lost=0, doubled=letter.occurrences - 1)
