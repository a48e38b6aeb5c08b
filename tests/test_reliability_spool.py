"""Issue 19 item 6: the dead-letter spool is ingested once, and without waiting for a failure.

Spool files are written by the pool children and the main process of every worker on a
host; any of them, the timer of each worker and ``ingest_dead_letter_spool`` may ingest
at the same moment. Each file must become ONE occurrence of its dead letter.
"""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from djcelery_ops.deadletter.spool import ingest_spool, spooled_files, write_to_spool
from djcelery_ops.management.commands.celery_ops_status import spool_lines
from djcelery_ops.models import DeadLetter
from tests.factories import failure_record
from tests.test_reliability_capture import Scenario
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = pytest.mark.reliability


@pytest.fixture
def spool(tmp_path, settings):
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(tmp_path / "spool")
    return tmp_path / "spool"


def _ingest_in_threads(count: int) -> list[int]:
    """``count`` ingestions started at the same instant, each with its own connection."""
    barrier = threading.Barrier(count)
    ingested: list[int] = []

    def ingest() -> None:
        try:
            barrier.wait()
            ingested.append(ingest_spool().ingested)
        finally:
            connection.close()

    threads = [threading.Thread(target=ingest) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return ingested


@pytest.mark.django_db(transaction=True)
def test_ingest__concurrent_ingestions_store_each_file_once(spool):
    files = 120
    for n in range(files):
        write_to_spool(failure_record(task_id=f"spooled-{n:03d}"))

    ingested = _ingest_in_threads(4)

    assert sum(ingested) == files  # each file counted by the one ingestion that took it
    assert spooled_files() == []
    letters = DeadLetter.objects.filter(task_id__startswith="spooled-")
    assert letters.count() == files
    assert sorted(set(letters.values_list("occurrences", flat=True))) == [1]


# --- A spooled dead letter is ingested without a further failure ------------------------------


@pytest.mark.worker
@pytest.mark.postgres
def test_spooled_dead_letter__the_worker_ingests_it_once_the_database_is_back(
    start_worker, db_proxy, tmp_path, settings, capsys
):
    scenario = Scenario("spool_ingested_without_a_further_failure", capsys)
    spool = tmp_path / "spool"
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(spool)
    url = f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{db_proxy.port}/postgres"
    env = {
        "DATABASE_URL": url,
        "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR": str(spool),
        "DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL": "1",
    }
    start_worker(env=env, concurrency=1)
    go = tmp_path / "go"
    lost = tasks.ops_fail_when.delay("waits-in-spool", str(go))
    wait_until(lambda: Effect.objects.filter(key="waits-in-spool").exists(), what="task start")

    db_proxy.stop()
    go.touch()
    wait_until(lambda: list(spool.glob("*.json")), what="the record in the spool")
    out = StringIO()
    call_command("celery_ops_status", stdout=out)
    assert f"Dead-letter spool: 1 file waiting in {spool}\n" in out.getvalue()

    db_proxy.start()  # no task fails after this: only the worker's timer can ingest
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=lost.id).first(),
        timeout=10,  # interval 1 s; the connection retry after the outage is the rest
        what="the spooled dead letter to be ingested without a further failure",
    )
    assert letter.exception_message == "failed after go for waits-in-spool"
    assert letter.occurrences == 1
    assert list(spool.glob("*.json")) == []
    assert spool_lines() == []
    scenario.report(tasks=1, dead_letters=1, lost=0, doubled=letter.occurrences - 1)
