"""Issue 19 item 6: the dead-letter spool is ingested once, and without waiting for a failure.

Spool files are written by the pool children and the main process of every worker on a
host; any of them, the timer of each worker and ``ingest_dead_letter_spool`` may ingest
at the same moment. Each file must become ONE occurrence of its dead letter.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from djcelery_ops.deadletter.spool import ingest_spool, spooled_files, write_to_spool
from djcelery_ops.models import DeadLetter
from tests.factories import failure_record

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
