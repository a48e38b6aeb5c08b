"""Storing failure records: grouping, size cap, upsert, spool, ORM queries."""

from __future__ import annotations

import datetime
import json

import pytest
from django.db import connection
from django.utils import timezone

from djcelery_ops.deadletter.capture import capture_failure
from djcelery_ops.deadletter.record import FailureRecord
from djcelery_ops.deadletter.spool import ingest_spool, spooled_files, write_to_spool
from djcelery_ops.deadletter.store import fingerprint, normalise_message, top_frame
from djcelery_ops.models import DeadLetter
from djcelery_ops.wire import jsonable
from tests.factories import dead_letter, failure_record

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def spool(tmp_path, settings):
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(tmp_path / "spool")
    return tmp_path / "spool"


def test_fingerprint__same_error_with_other_ids_groups_together():
    a = failure_record(exception_message="order 17 not found (id 'abc')")
    b = failure_record(exception_message="order 9001 not found (id 'xyz')")
    c = failure_record(exception_message="order 17 was cancelled")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert normalise_message("took 3.5s for 0xdeadbeef") == "took <n>s for <hex>"


def test_fingerprint__top_frame_ignores_line_numbers():
    tb = 'File "/a.py", line 3, in outer\n  File "/b.py", line 40, in inner\nKeyError'
    assert top_frame(tb) == "/b.py:inner"
    assert top_frame("") == ""


def test_store__same_task_id_updates_one_row_and_counts_occurrences():
    first = dead_letter(task_id="t-1", exception_message="first")
    second = dead_letter(task_id="t-1", exception_message="second", retries=3)
    assert first.pk == second.pk
    second.refresh_from_db()
    assert second.occurrences == 2
    assert second.exception_message == "second"
    assert second.retries == 3
    assert second.first_failed_at <= second.last_failed_at
    assert DeadLetter.objects.count() == 1


def test_store__payload_over_the_cap_is_replaced_by_a_marked_preview(settings):
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_PAYLOAD_BYTES = 1000
    letter = dead_letter(args=["x" * 5000], kwargs={})
    assert letter.payload_truncated is True
    marker = letter.args[0]
    assert marker["__truncated__"] is True
    assert marker["size_bytes"] > 5000
    assert len(marker["preview"]) == 1024
    small = dead_letter(args=["x" * 10])
    assert small.payload_truncated is False and small.args == ["x" * 10]


def test_record__values_json_cannot_hold_are_kept_as_their_repr():
    value = jsonable([datetime.date(2026, 1, 2), {1, 2}.__class__, object.__new__(object)])
    assert value[0] == "2026-01-02"
    assert value[1] == {"__repr__": "<class 'set'>"}
    assert value[2]["__repr__"].startswith("<object object")


def test_record__json_round_trip_keeps_every_field():
    record = failure_record(retries=2, periodic_task_name="nightly")
    assert FailureRecord.from_json(record.to_json()) == record


def test_spool__records_written_while_db_is_down_are_ingested_once(spool):
    records = [failure_record() for _ in range(3)]
    for record in records:
        write_to_spool(record)
    assert len(spooled_files()) == 3
    assert not list(spool.glob(".*.tmp"))
    assert ingest_spool() == (3, 0)
    assert spooled_files() == []
    assert set(DeadLetter.objects.values_list("task_id", flat=True)) == {r.task_id for r in records}


def test_spool__unreadable_file_is_left_in_place_and_reported(spool):
    write_to_spool(failure_record(task_id="good"))
    (spool / "0-broken.json").write_text("{not json")
    assert ingest_spool() == (1, 1)
    assert [p.name for p in spooled_files()] == ["0-broken.json"]


def test_capture__database_error_spools_the_record_instead_of_losing_it(spool):
    record = failure_record(task_id="during-outage")
    with connection.cursor() as cursor:
        # The table disappears inside this test's transaction: the insert fails like it
        # would with the server gone, and the rollback at the end of the test restores it.
        cursor.execute("ALTER TABLE djcelery_ops_deadletter RENAME TO dl_away")
        assert capture_failure(record) is False
    files = spooled_files()
    assert len(files) == 1
    assert json.loads(files[0].read_text())["task_id"] == "during-outage"


def test_queryset__pending_for_task_since_and_grouped_counts():
    old = timezone.now() - datetime.timedelta(days=3)
    dead_letter(task_id="a", exception_message="order 1 not found")
    dead_letter(task_id="b", exception_message="order 2 not found")
    dead_letter(task_id="a", exception_message="order 1 not found")
    dead_letter(task_id="c", task_name="mail.send", failed_at=old.isoformat())
    DeadLetter.objects.filter(task_id="b").update(status=DeadLetter.Status.DISCARDED)

    assert set(DeadLetter.objects.pending().values_list("task_id", flat=True)) == {"a", "c"}
    assert list(DeadLetter.objects.for_task("mail.send").values_list("task_id", flat=True)) == ["c"]
    since = timezone.now() - datetime.timedelta(days=1)
    assert set(DeadLetter.objects.since(since).values_list("task_id", flat=True)) == {"a", "b"}
    groups = list(DeadLetter.objects.by_fingerprint())
    charge = next(g for g in groups if g["task_name"] == "shop.tasks.charge")
    assert (charge["letters"], charge["failures"]) == (2, 3)
    assert charge["first_seen"] <= charge["last_seen"]
    assert len(groups) == 2
