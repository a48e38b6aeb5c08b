"""A replay calls the task with the values and types of the original delivery.

The worker tests compare what the task received, shown by ``ops_echo_call`` in its
exception message, on the original delivery and on the replay.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from decimal import Decimal
from fractions import Fraction
from io import StringIO

import pytest
from django.core.management import call_command
from kombu.serialization import loads

from djcelery_ops.deadletter.call import BLOCKED_LEGACY, BLOCKED_OVER_CAP, BLOCKED_TRUNCATED
from djcelery_ops.deadletter.record import FailureRecord, record_from_request
from djcelery_ops.deadletter.services import replay
from djcelery_ops.deadletter.store import store_record
from djcelery_ops.models import DeadLetter, Replay
from tests.celery_app import app as celery_app
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until
from tests.worker import WorkerProcess, purge_queue

PICKLE = "application/x-python-serialize"
WHEN = datetime.datetime(2026, 3, 1, 12, 30, 15, 250, tzinfo=datetime.UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
# Every type kombu's JSON carries with a marker, NUL in text, and what JSON turns into a
# list (a tuple): the replay must deliver what the original delivery delivered.
JSON_ARGS = [
    WHEN,
    WHEN.date(),
    datetime.time(8, 15, 30),
    Decimal("10.10"),
    ID,
    b"raw\x00bytes",
    (1, (2, "three")),
    {"nested": [Decimal("1.5"), {"on": WHEN.date(), "ids": [ID]}]},
    "nul\x00inside",
]
# C_FORCE_ROOT: Celery refuses to run a pickle-accepting worker as root (test containers).
PICKLE_WORKER = {"DJCELERY_OPS_TEST_ACCEPT_CONTENT": "json,pickle", "C_FORCE_ROOT": "1"}
JSON_KWARGS = {"amount": Decimal("10.10"), "pair": (1, 2), "at": WHEN}


@pytest.fixture
def accepts_pickle():
    """The replaying process accepts pickle too, or it refuses to decode a pickled call."""
    before = list(celery_app.conf.accept_content)
    celery_app.conf.accept_content = ["json", "pickle"]
    yield
    celery_app.conf.accept_content = before


@pytest.fixture
def replay_now(django_capture_on_commit_callbacks):
    """``replay`` with its on-commit publish run inside the test's transaction."""

    def run(*args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return replay(*args, **kwargs)

    return run


def _dead_letter_of(task_id: str) -> DeadLetter:
    return wait_until(
        lambda: DeadLetter.objects.filter(task_id=task_id).first(),
        what=f"the dead letter of {task_id}",
    )


def _replayed_call(letter: DeadLetter) -> str:
    """Replay ``letter`` (an ``ops_echo_call``); the message of the replay's failure."""
    outcome = replay([letter], by="ops", reason="faithful?")
    assert outcome.new_task_ids, outcome.skipped
    return _dead_letter_of(outcome.new_task_ids[0]).exception_message


@pytest.mark.worker
def test_replay__json_call_comes_back_with_the_types_of_the_original_delivery(worker, celery_queue):
    sent = tasks.ops_echo_call.apply_async(JSON_ARGS, JSON_KWARGS, queue=celery_queue)
    letter = _dead_letter_of(sent.id)
    original = letter.exception_message
    # What the original delivery gave the task: kombu's JSON markers restored the types,
    # and tuples arrived as lists.
    assert "Decimal('10.10')" in original and "UUID('12345678" in original
    assert "b'raw\\x00bytes'" in original and "[1, [2, 'three']]" in original
    assert letter.call_content_type == "application/json" and not letter.replay_blocker

    assert _replayed_call(letter) == original


@pytest.mark.worker
def test_replay__pickle_call_comes_back_as_pickled(start_worker, celery_queue, accepts_pickle):
    start_worker(env=PICKLE_WORKER)
    args = [(1, 2), Fraction(1, 3), {3, 4}, Decimal("10.10"), WHEN, b"\xff\x00"]
    sent = tasks.ops_echo_call.apply_async(
        args, {"t": ("a",)}, queue=celery_queue, serializer="pickle"
    )
    letter = _dead_letter_of(sent.id)
    original = letter.exception_message
    assert "((1, 2), Fraction(1, 3), {3, 4}" in original and "{'t': ('a',)}" in original
    assert letter.call_content_type == PICKLE and letter.call_body_base64

    assert _replayed_call(letter) == original


def _record(args, kwargs, *, content_type: str = "application/json") -> FailureRecord:
    return record_from_request(
        {"id": str(uuid.uuid4()), "content_type": content_type, "djcelery_ops_queue": "q"},
        task_name="tests.testapp.tasks.ops_echo_call",
        reason="exception",
        exc=ValueError("x"),
        traceback="",
        args=args,
        kwargs=kwargs,
    )


def _published(queue: str) -> list[dict]:
    """Args and kwargs of every message in ``queue``, decoded like a pickle-accepting worker."""
    messages = []
    with celery_app.connection_for_write() as conn:
        while (message := conn.default_channel.basic_get(queue, no_ack=True)) is not None:
            args, kwargs, _embed = loads(
                message.body,
                message.content_type,
                message.content_encoding,
                accept={"application/json", PICKLE},
            )
            messages.append({"args": args, "kwargs": kwargs, "type": message.content_type})
    return messages


@pytest.mark.django_db
def test_replay__publishes_the_kept_call_not_the_readable_json(celery_queue, replay_now):
    letter = store_record(_record([Decimal("10.10"), (1, 2)], {"at": WHEN}))
    assert letter.args == ["10.10", [1, 2]]  # what people read: lossy

    replay_now([letter], by="ops", reason="r", queue=celery_queue)

    [message] = _published(celery_queue)
    assert message["args"] == [Decimal("10.10"), [1, 2]]
    assert type(message["args"][0]) is Decimal and message["kwargs"] == {"at": WHEN}


@pytest.mark.django_db
def test_replay__unserializable_payload_is_refused_by_plain_replay_and_allowed_edited(
    celery_queue, replay_now
):
    letter = store_record(_record([object()], {}))
    assert letter.replay_blocker.startswith("payload not kept faithfully: EncodeError")
    assert letter.args[0]["__repr__"].startswith("<object object")

    plain = replay_now([letter], by="ops", reason="r", queue=celery_queue)
    assert plain.done == 0 and plain.skipped == {letter.replay_blocker: 1}
    assert DeadLetter.objects.get(pk=letter.pk).status == DeadLetter.Status.PENDING

    edited = replay_now([letter], by="ops", reason="r", args=[7], kwargs={}, queue=celery_queue)
    assert edited.done == 1
    [message] = _published(celery_queue)
    assert message["args"] == [7] and message["kwargs"] == {}


@pytest.mark.django_db
def test_replay__truncated_or_oversized_payload_is_refused_by_plain_replay(
    settings, celery_queue, replay_now
):
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_PAYLOAD_BYTES = 200
    over = store_record(_record(["x" * 300], {}))
    encoded_over = store_record(_record([Decimal("1." + "1" * 165)], {}))
    assert over.payload_truncated and over.replay_blocker == BLOCKED_TRUNCATED
    assert encoded_over.replay_blocker == BLOCKED_OVER_CAP  # the readable JSON was smaller

    plain = replay_now([over, encoded_over], by="ops", reason="r", queue=celery_queue)
    assert plain.done == 0
    assert plain.skipped == {BLOCKED_TRUNCATED: 1, BLOCKED_OVER_CAP: 1}

    edited = replay_now([over], by="ops", reason="r", args=["short"], kwargs={}, queue=celery_queue)
    assert edited.done == 1 and _published(celery_queue)[0]["args"] == ["short"]


@pytest.mark.django_db
def test_replay__pickled_call_is_skipped_where_pickle_is_not_accepted(celery_queue, replay_now):
    letter = store_record(_record([(1, 2)], {}, content_type=PICKLE))
    assert letter.call_content_type == PICKLE

    outcome = replay_now([letter], by="ops", reason="r", queue=celery_queue)

    assert outcome.done == 0
    assert outcome.skipped == {f"content type {PICKLE} not accepted here": 1}
    assert DeadLetter.objects.get(pk=letter.pk).status == DeadLetter.Status.PENDING


@pytest.mark.django_db
def test_spooled_record__keeps_its_encoded_call_through_json(
    celery_queue, accepts_pickle, replay_now
):
    record = _record([(1, 2), b"\x00\xff", "nul\x00"], {"d": Decimal("2.50")}, content_type=PICKLE)

    letter = store_record(FailureRecord.from_json(record.to_json()))
    replay_now([letter], by="ops", reason="r", queue=celery_queue)

    [message] = _published(celery_queue)
    assert message["type"] == PICKLE
    assert message["args"] == [(1, 2), b"\x00\xff", "nul\x00"]
    assert message["kwargs"] == {"d": Decimal("2.50")}


@pytest.mark.django_db
def test_json_call_with_nul_and_lone_surrogate__is_stored_and_replayed_exactly(
    celery_queue, replay_now
):
    text = "nul\x00 and \ud800 lone"
    letter = store_record(FailureRecord.from_json(_record([text], {"k": text}).to_json()))
    assert letter.args == ["nul\\u0000 and \\ud800 lone"]  # escaped for the database

    replay_now([letter], by="ops", reason="r", queue=celery_queue)

    [message] = _published(celery_queue)
    assert message["args"] == [text] and message["kwargs"] == {"k": text}


def test_spooled_record_of_an_older_version__is_marked_not_faithful():
    record = _record([Decimal("1")], {})
    data = dataclasses.asdict(record)
    del data["call"], data["replay_blocker"]

    again = FailureRecord.from_json(json.dumps(data))

    assert again.call is None and again.replay_blocker == BLOCKED_LEGACY


# --- A body never decoded: refused by plain replay, republished unchanged on request --------


@pytest.mark.worker
def test_never_decoded_body__refused_by_replay__republished_raw_runs_with_original_args(
    worker, celery_queue
):
    pickle_queue = f"{celery_queue}-pickle"
    pickle_worker = WorkerProcess(queue=pickle_queue, env=PICKLE_WORKER)
    try:
        pickle_worker.start()
        # Pickle sent to the JSON-only worker: rejected, dead-lettered, body kept as bytes.
        sent = tasks.ops_record_call.apply_async(
            [(1, 2), Decimal("3.5")], {"k": b"v"}, queue=celery_queue, serializer="pickle"
        )
        letter = _dead_letter_of(sent.id)
        assert letter.reason == DeadLetter.Reason.REJECTED_MESSAGE
        assert letter.replay_blocker == "body never decoded" and letter.args == []

        plain = replay([letter], by="ops", reason="try")
        assert plain.done == 0 and plain.skipped == {"body never decoded": 1}

        out = StringIO()
        call_command(
            "replay_dead_letters", "--raw-body", f"--to-queue={pickle_queue}",
            f"--id={letter.pk}", "--reason=send it to the pickle worker", stdout=out,
        )  # fmt: skip
        assert "Republished the original message of 1 dead letter (run " in out.getvalue()
        new_id = Replay.objects.get(dead_letter=letter).new_task_id
        effect = wait_until(
            lambda: Effect.objects.filter(task_id=new_id).first(), what="the raw republish to run"
        )
        assert effect.key == repr((((1, 2), Decimal("3.5")), {"k": b"v"}))
        wait_until(
            lambda: DeadLetter.objects.get(pk=letter.pk).status == DeadLetter.Status.RESOLVED,
            what="the dead letter to be resolved",
        )
    finally:
        pickle_worker.stop()
        purge_queue(pickle_queue)
