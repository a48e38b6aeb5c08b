"""Issue 12 "Dead letters are never lost": faults injected around a real prefork worker.

Each scenario prints one line, ``scenario=<name> tasks=N dead_letters=N lost=0 doubled=0
seconds=S``, so CI output shows what was checked. ``lost`` counts failures with neither a
dead letter nor a spool file; ``doubled`` counts messages still in the queue after the
worker stopped (not acked: they would run again) plus dead letters counted twice.
"""

from __future__ import annotations

import base64
import contextlib
import time

import pytest
from django.db import connection

from djcelery_ops.deadletter.spool import ingest_spool
from djcelery_ops.idempotency.execution import lease_seconds
from djcelery_ops.models import DeadLetter
from tests.celery_app import app
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.reliability]


class Scenario:
    def __init__(self, name: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.name, self.capsys, self.started = name, capsys, time.monotonic()

    def report(
        self, *, tasks: int, dead_letters: int, lost: int, doubled: int, **sizes: object
    ) -> None:
        """Print the line; ``sizes`` (rounds, outage seconds, ...) go before ``seconds``."""
        seconds = time.monotonic() - self.started
        extra = "".join(f" {name}={value}" for name, value in sizes.items())
        with self.capsys.disabled():
            print(
                f"\nscenario={self.name} tasks={tasks} dead_letters={dead_letters} "
                f"lost={lost} doubled={doubled}{extra} seconds={seconds:.1f}"
            )
        assert (lost, doubled) == (0, 0)


def queue_depth(queue: str) -> int:
    """Messages waiting in ``queue`` (0 when it does not exist)."""
    with app.connection_for_write() as conn, contextlib.suppress(*conn.channel_errors):
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)
    return 0


def redis_unacked(queue: str) -> list[bytes]:
    """Redis only: the messages of ``queue`` a worker holds unacked (kombu's "unacked"
    hash, shared by every queue of the database: earlier tests may leave their own)."""
    with app.connection_for_write() as conn:
        return [
            raw for raw in conn.default_channel.client.hvals("unacked") if queue.encode() in raw
        ]


# --- Item 1: the database goes down at the final failure -------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["django-db", "no-result-backend"])
def test_database_down_at_final_failure__record_durable_whatever_the_result_backend(
    start_worker, db_proxy, celery_queue, tmp_path, settings, capsys, backend
):
    scenario = Scenario(f"db_down_at_failure[{backend}]", capsys)
    spool = tmp_path / "spool"
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(spool)
    url = f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{db_proxy.port}/postgres"
    env = {"DATABASE_URL": url, "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR": str(spool)}
    if backend == "django-db":
        env["DJCELERY_OPS_TEST_RESULT_BACKEND"] = "django-db"
    worker = start_worker(env=env, concurrency=2)
    go = tmp_path / "go"
    results = [tasks.ops_fail_when.delay(f"outage-{n}", str(go)) for n in range(2)]
    wait_until(lambda: Effect.objects.filter(key__startswith="outage-").count() == 2)

    db_proxy.stop()  # the database is gone for the worker when both tasks fail
    go.touch()
    wait_until(lambda: len(list(spool.glob("*.json"))) == 2, what="both records in the spool")
    ids = [r.id for r in results]
    wait_until(lambda: all(worker.log().count(i) >= 2 for i in ids), what="both tasks to end")
    worker.stop()  # warm shutdown: a message not acked goes back to the queue
    waiting = queue_depth(celery_queue)

    db_proxy.start()
    report = ingest_spool()
    assert (report.ingested, report.quarantined, report.left) == (2, [], 0)
    letters = DeadLetter.objects.filter(task_id__in=ids)
    assert {(letter.reason, letter.exception_message) for letter in letters} == {
        ("exception", "failed after go for outage-0"),
        ("exception", "failed after go for outage-1"),
    }
    assert all("ValueError: failed after go" in letter.traceback for letter in letters)
    scenario.report(
        tasks=2,
        dead_letters=letters.count(),
        lost=2 - letters.count(),
        doubled=waiting + sum(letter.occurrences - 1 for letter in letters),
    )


# --- Item 7: waiting for a busy idempotency key ----------------------------------------------


def _hold_key_then_send_a_duplicate(key: str, hold: float):
    holder = tasks.idem_lease_hold.delay(key, hold)
    wait_until(lambda: Effect.objects.filter(key=key).exists(), what="the holder to start")
    return holder, tasks.idem_lease_hold.delay(key, hold)


def test_waiting_for_a_busy_key__does_not_spend_the_retry_budget(start_worker, capsys):
    scenario = Scenario("idempotency_wait_within_bound", capsys)
    worker = start_worker(concurrency=2, env={"DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS": "1"})
    holder, duplicate = _hold_key_then_send_a_duplicate("busy-ok", 3)
    # max_retries=0: before issue 12 the first wait already exhausted the retry budget.
    wait_until(
        lambda: f"[{duplicate.id}] succeeded" in worker.log(),
        timeout=60,
        what="the duplicate to end as skipped",
    )
    assert worker.log().count(f"[{duplicate.id}] received") >= 2  # it waited
    assert holder.id in worker.log()
    assert Effect.objects.filter(key="busy-ok").count() == 1
    assert not DeadLetter.objects.exists()
    scenario.report(tasks=2, dead_letters=0, lost=0, doubled=0)


def test_waiting_for_a_busy_key__ends_soon_after_the_holder_not_at_its_lease_end(
    start_worker, capsys
):
    """A duplicate delivered while the first copy runs (a slot sent twice in a beat
    failover) looks again after 1, 1, 2, 4 s...: it is skipped seconds after the holder
    ends. It used to wait for the whole lease (the hard time limit plus the margin: 40 s
    here, 360 s with the defaults), a message held that long in the worker."""
    scenario = Scenario("idempotency_wait_ends_with_the_holder", capsys)
    worker = start_worker(concurrency=2)  # the default margin: a lease of 10 + 30 s
    lease = lease_seconds(tasks.idem_lease_hold)
    _holder, duplicate = _hold_key_then_send_a_duplicate("busy-short", 2)
    wait_until(
        lambda: f"[{duplicate.id}] succeeded" in worker.log(),
        timeout=lease - 10,
        what="the duplicate to be skipped well before the holder's lease would end",
    )
    assert worker.log().count(f"[{duplicate.id}] received") >= 2  # it waited
    assert Effect.objects.filter(key="busy-short").count() == 1
    scenario.report(tasks=2, dead_letters=0, lost=0, doubled=0)


def test_waiting_for_a_busy_key__past_its_own_bound_is_dead_lettered_as_key_busy(
    start_worker, capsys
):
    scenario = Scenario("idempotency_wait_bound_exhausted", capsys)
    env = {
        "DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS": "1",
        "DJCELERY_OPS_IDEMPOTENCY_MAX_WAIT_SECONDS": "2",
    }
    worker = start_worker(concurrency=2, env=env)
    holder, duplicate = _hold_key_then_send_a_duplicate("busy-long", 8)
    letter = wait_until(
        lambda: DeadLetter.objects.filter(task_id=duplicate.id).first(), what="the dead letter"
    )
    assert letter.reason == DeadLetter.Reason.IDEMPOTENCY_KEY_BUSY
    assert letter.exception_class == "djcelery_ops.idempotency.execution.IdempotencyKeyBusy"
    assert letter.retries == 0
    assert worker.log().count(f"[{duplicate.id}] received") >= 2  # it did wait, then gave up
    assert "djcelery_ops_key_wait_since" not in letter.options["headers"]  # a replay starts anew
    assert Effect.objects.filter(key="busy-long").count() == 1
    scenario.report(tasks=2, dead_letters=1, lost=0, doubled=0)


# --- Item 4: garbage on the queue ------------------------------------------------------------

OPS_CONSUMER = {"DJCELERY_OPS_TEST_WORKER_CONSUMER": "djcelery_ops.deadletter.consumer:OpsConsumer"}
GARBAGE = {
    "undecodable": (b"\xff\xfe{not json", "application/json"),
    "wrong_shape": (b'{"a": 1}', "application/json"),
}


def publish_raw(queue: str, body: bytes, content_type: str, task_id: str) -> None:
    """A message as a foreign or broken publisher sends it: kombu, no Celery protocol."""
    headers = {"task": "tests.testapp.tasks.ops_add", "id": task_id, "tenant": "acme"}
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body, exchange="", routing_key=queue, content_type=content_type,
            content_encoding="utf-8", headers=headers, correlation_id=task_id,
        )  # fmt: skip


def _send_refused_messages() -> dict[str, str]:
    """Well-formed Celery messages the worker must refuse: task id -> expected reason."""
    pickled = tasks.ops_add.apply_async((2, 3), serializer="pickle")  # worker accepts JSON only
    unknown = app.send_task("tests.testapp.tasks.no_such_task", args=(1,), kwargs={"n": 2})
    return {
        pickled.id: DeadLetter.Reason.REJECTED_MESSAGE,
        unknown.id: DeadLetter.Reason.UNREGISTERED,
    }


def test_garbage_on_the_queue__dead_lettered_and_the_worker_keeps_running(
    start_worker, celery_queue, capsys
):
    scenario = Scenario(f"garbage_on_the_queue[{app.conf.broker_url.split(':')[0]}]", capsys)
    worker = start_worker(env=OPS_CONSUMER, concurrency=1)
    for name, (body, content_type) in GARBAGE.items():
        publish_raw(celery_queue, body, content_type, f"garbage-{name}")
    refused = _send_refused_messages()
    garbage = DeadLetter.objects.filter(task_id__startswith="garbage-")
    wait_until(lambda: garbage.count() == len(GARBAGE), what="a dead letter per message")
    letters = list(garbage)
    for letter in letters:
        body, content_type = GARBAGE[letter.task_id.removeprefix("garbage-")]
        assert letter.reason == DeadLetter.Reason.MALFORMED_MESSAGE
        assert base64.b64decode(letter.options["raw_body"]) == body
        assert letter.options["message_headers"]["tenant"] == "acme"
        assert letter.options["content_type"] == content_type
        assert letter.task_name == "tests.testapp.tasks.ops_add"
    others = DeadLetter.objects.filter(task_id__in=refused)
    wait_until(lambda: others.count() == len(refused), what="the refused messages' letters")
    assert {letter.task_id: letter.reason for letter in others} == refused
    letters += list(others)
    after = tasks.ops_add.delay(2, 3)  # the worker still consumes
    wait_until(lambda: f"[{after.id}] succeeded" in worker.log(), what="a healthy task after")
    assert worker.process.poll() is None
    worker.stop()
    waiting = queue_depth(celery_queue)
    sent = len(GARBAGE) + len(refused)
    scenario.report(
        tasks=sent, dead_letters=len(letters), lost=sent - len(letters),
        doubled=waiting + sum(letter.occurrences - 1 for letter in letters),
    )  # fmt: skip
