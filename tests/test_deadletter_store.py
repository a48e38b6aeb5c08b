"""Storing failure records: grouping, size cap, upsert, spool, ORM queries."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest
from django.db import connection
from django.utils import timezone

from djcelery_ops.deadletter.capture import capture_failure
from djcelery_ops.deadletter.record import FailureRecord
from djcelery_ops.deadletter.spool import ingest_spool, spooled_files, write_to_spool
from djcelery_ops.deadletter.store import fingerprint, normalise_message, store_record, top_frame
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
    report = ingest_spool()
    assert (report.ingested, report.quarantined, report.left) == (3, [], 0)
    assert spooled_files() == []
    assert set(DeadLetter.objects.values_list("task_id", flat=True)) == {r.task_id for r in records}


def test_spool__unreadable_file_is_quarantined_with_its_reason(spool):
    write_to_spool(failure_record(task_id="good"))
    (spool / "0-broken.json").write_text("{not json")
    report = ingest_spool()
    assert (report.ingested, len(report.quarantined), report.left) == (1, 1, 0)
    assert spooled_files() == []
    assert (spool / "quarantine" / "0-broken.json").read_text() == "{not json"
    assert "unreadable: JSONDecodeError" in (spool / "quarantine" / "0-broken.reason").read_text()


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


# --- Data the database refuses (issue 12, items 2, 3 and 5) -----------------------------------

UNSTORABLE = "nul \x00 and lone \ud800 surrogate"
ESCAPED = "nul \\u0000 and lone \\ud800 surrogate"


def test_store__nul_and_lone_surrogates_in_text_are_escaped_visibly():
    letter = dead_letter(
        task_id="nul-text",
        exception_message=UNSTORABLE,
        traceback=f"Traceback\nValueError: {UNSTORABLE}",
        worker_hostname="w\x00",
    )
    letter.refresh_from_db()
    assert letter.exception_message == ESCAPED
    assert letter.traceback.endswith(ESCAPED)
    assert letter.worker_hostname == "w\\u0000"


def test_store__nul_in_args_and_keys_is_escaped_and_the_exact_call_kept_for_replay():
    args, kwargs = ["a\x00b", {"k\x00": "\udcff"}], {"note": "x\x00"}
    letter = dead_letter(task_id="nul-args", args=args, kwargs=kwargs)
    letter.refresh_from_db()
    assert letter.args == ["a\\u0000b", {"k\\u0000": "\\udcff"}]
    assert letter.kwargs == {"note": "x\\u0000"}
    assert json.loads(letter.options["original_payload_json"]) == [args, kwargs]
    clean = dead_letter(task_id="clean-args", args=["plain"])
    assert "original_payload_json" not in clean.options


def test_record__message_and_traceback_over_their_caps_keep_head_and_tail(settings):
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_MESSAGE_BYTES = 1000
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_TRACEBACK_BYTES = 2000
    message = "HEAD" + "é" * 50_000 + "TAIL"
    record = failure_record(exception_message=message, traceback="T" * 5_000_000 + "ValueError")
    assert len(record.exception_message.encode()) <= 1000
    assert record.exception_message.startswith("HEADé")
    assert record.exception_message.endswith("éTAIL")
    assert "exception message cut by djcelery_ops: 100008 bytes in all" in record.exception_message
    assert len(record.traceback.encode()) <= 2000
    assert record.traceback.endswith("ValueError")
    assert FailureRecord.from_json(record.to_json()) == record  # a spool file is bounded too
    letter = store_record(record)
    assert letter.exception_message == record.exception_message
    short = failure_record(exception_message="short")
    assert short.exception_message == "short"


def test_capture__a_record_the_database_refuses_is_not_spooled_as_an_outage(spool):
    # NaN is valid to Python's json but not to JSON columns: PostgreSQL raises DataError,
    # SQLite's JSON_VALID check an IntegrityError. The database is fine; the data is not.
    record = failure_record(task_id="nan-call", args=[float("nan")], kwargs={"x": 1})
    assert capture_failure(record) is True
    letter = DeadLetter.objects.get(task_id="nan-call")
    assert letter.args[0]["__refused__"] is True
    assert letter.options["original_payload_json"] == '[[NaN], {"x": 1}]'
    assert letter.exception_message == record.exception_message
    assert spooled_files() == []  # nothing blocks the spool
    [kept] = (spool / "quarantine").glob("*.json")
    assert json.loads(kept.read_text())["task_id"] == "nan-call"
    assert "refused by the database" in kept.with_suffix(".reason").read_text()


def test_ingest__refused_file_is_quarantined_and_the_files_behind_it_are_ingested(spool):
    write_to_spool(failure_record(task_id="a-nul", args=["\x00"], exception_message="\x00"))
    write_to_spool(failure_record(task_id="b-nan", args=[float("nan")]))
    for n in range(3):
        write_to_spool(failure_record(task_id=f"c-healthy-{n}"))
    report = ingest_spool()
    assert (report.ingested, len(report.quarantined), report.left) == (4, 1, 0)
    [(path, reason)] = report.quarantined
    assert path.parent == spool / "quarantine"
    assert reason.startswith("refused by the database: ")
    assert path.with_suffix(".reason").read_text().strip() == reason
    assert spooled_files() == []
    stored = set(DeadLetter.objects.values_list("task_id", flat=True))
    assert stored == {"a-nul", "c-healthy-0", "c-healthy-1", "c-healthy-2"}
    assert DeadLetter.objects.get(task_id="a-nul").args == ["\\u0000"]


def test_job_run_exception_message__is_capped_and_escaped_like_a_dead_letter(settings):
    from djcelery_ops.runs.receivers import _event

    settings.DJCELERY_OPS_DEAD_LETTER_MAX_MESSAGE_BYTES = 200
    event = _event("t-1", "failed", 0, exception_message="\x00" + "x" * 50_000 + "END")
    assert len(event["exception_message"].encode()) <= 200
    assert event["exception_message"].startswith("\\u0000xxx")
    assert event["exception_message"].endswith("xEND")


# Outside a test transaction, as in a worker: the capture manages the connection itself.
def test_capture__keeps_a_healthy_connection_under_conn_max_age_zero(transactional_db):
    assert connection.settings_dict["CONN_MAX_AGE"] == 0  # Django's default: per request
    assert capture_failure(failure_record(task_id="first")) is True
    first = connection.connection
    assert capture_failure(failure_record(task_id="second")) is True
    # close_old_connections() would have opened a new connection for every dead letter.
    assert connection.connection is first
    assert DeadLetter.objects.filter(task_id__in=["first", "second"]).count() == 2


def test_capture__replaces_a_connection_an_error_left_unusable(transactional_db):
    assert capture_failure(failure_record(task_id="before")) is True
    broken = connection.connection
    broken.close()  # the server went away under it
    connection.errors_occurred = True
    assert capture_failure(failure_record(task_id="after")) is True
    assert connection.connection is not broken
    assert DeadLetter.objects.filter(task_id="after").exists()


def test_store__same_task_id_again_counts_an_occurrence_and_keeps_the_first_call(spool):
    first = store_record(failure_record(task_id="again", args=[1], exception_message="one"))
    again = store_record(failure_record(task_id="again", args=[2], exception_message="two"))
    assert again.pk == first.pk and again.occurrences == 2
    assert again.args == [1]  # the call that failed first is the one replayed
    assert again.exception_message == "two"  # the latest failure's details
    assert again.first_failed_at == first.first_failed_at
    assert again.updated_at >= first.updated_at


def test_store__the_same_record_written_again_is_not_a_second_occurrence(spool):
    """A commit whose answer the cut connection lost is retried or spooled: once still."""
    record = failure_record(task_id="lost-answer", worker_hostname="w1@host")
    store_record(record)
    store_record(record)  # the capture's retry after a reconnect
    write_to_spool(record)  # or the spool, when the retry failed too
    assert ingest_spool().ingested == 1
    letter = DeadLetter.objects.get(task_id="lost-answer")
    assert letter.occurrences == 1
    redelivered = dataclasses.replace(record, failed_at=timezone.now().isoformat())
    assert store_record(redelivered).occurrences == 2  # another failure of the same task id
    on_another_worker = dataclasses.replace(redelivered, worker_hostname="w2@host")
    assert store_record(on_another_worker).occurrences == 3
