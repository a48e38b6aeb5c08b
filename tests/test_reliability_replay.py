"""Replay under faults: every claimed dead letter runs exactly once.

Each round replays a batch of dead letters of a task that writes one row per execution,
with a fault injected at a random moment: the broker connection of the replaying command
cut through a TCP proxy (then restored), the command SIGKILLed, or two commands racing.
The command is then run again until nothing is left, a real worker drains the queue, and
the test counts executions per dead letter: exactly one each.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

from djcelery_ops.deadletter.outbox import confirming_producer
from djcelery_ops.deadletter.services import interrupted_replays, recover_replays, replay
from djcelery_ops.models import DeadLetter, IdempotencyKey, Replay
from tests.beat import StallingProxy
from tests.celery_app import app as celery_app
from tests.factories import dead_letter
from tests.proxy import TcpProxy, broker_through
from tests.replay_helpers import drain, executions
from tests.testapp.models import Effect
from tests.worker import REPO_ROOT

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

TASK = "tests.testapp.tasks.ops_replay_effect"
LETTERS = int(os.environ.get("DJCELERY_OPS_CHAOS_LETTERS", "150"))
ROUNDS = int(os.environ.get("DJCELERY_OPS_CHAOS_ROUNDS", "5"))
NETWORK_BROKER = settings.CELERY_BROKER_URL.startswith(("redis", "amqp"))


def command(queue: str, *args: str, broker: str | None = None) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJCELERY_OPS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "DJCELERY_OPS_TEST_QUEUE": queue,
        "DJCELERY_OPS_DEAD_LETTER_REPLAY_RECOVER_AFTER": "0.001",
        "PYTHONUNBUFFERED": "1",
    }
    if broker:
        env["CELERY_BROKER_URL"] = broker
    return subprocess.Popen(
        [sys.executable, "manage.py", "replay_dead_letters", "--reason=chaos", "--by=chaos",
         "--batch-size=25", *args],
        cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def in_the_middle(process: subprocess.Popen[str]) -> None:
    """Return at a random moment inside the publishing: just after the k-th batch's
    progress line, when the next batch is being claimed, sent or marked published."""
    assert process.stdout is not None
    for _batch in range(random.randint(1, 3)):
        if not process.stdout.readline():
            return  # the command ended already
    time.sleep(random.uniform(0, 0.02))


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=180)
    return process.returncode, out + err


def seed(count: int, queue: str, round_number: int) -> list[str]:
    keys = [f"r{round_number}-{n}" for n in range(count)]
    for key in keys:
        dead_letter(task_name=TASK, args=[key], kwargs={}, options={"queue": queue})
    return keys


def settle_until_done(queue: str) -> None:
    """Run the command until no dead letter is pending and no replay is interrupted."""
    for _attempt in range(10):
        code, output = finish(command(queue))
        assert code == 0, output
        pending = DeadLetter.objects.filter(status=DeadLetter.Status.PENDING).exists()
        if not pending and not interrupted_replays(older_than=0).exists():
            return
    raise AssertionError("replays still pending or interrupted after 10 runs")


def clear() -> None:
    for model in (Effect, Replay, DeadLetter, IdempotencyKey):
        model.objects.all().delete()


def run_rounds(start_worker, capsys, scenario: str, fault) -> None:
    """Per round: seed dead letters, run ``fault(queue)`` (a replay with a fault in it),
    settle, count executions per dead letter; print the scenario's totals."""
    queue = start_worker().queue
    started, totals = time.monotonic(), Counter()
    for round_number in range(ROUNDS):
        keys = seed(LETTERS, queue, round_number)
        fault(queue)
        settle_until_done(queue)
        once, doubled, lost = executions(keys)
        totals.update(once=once, doubled=doubled, lost=lost)
        assert (once, doubled, lost) == (LETTERS, 0, 0), f"round {round_number}"
        clear()
    with capsys.disabled():
        print(
            f"\nreplay_chaos scenario={scenario} rounds={ROUNDS} dead_letters={LETTERS * ROUNDS} "
            f"executed_once={totals['once']} doubled={totals['doubled']} lost={totals['lost']} "
            f"seconds={time.monotonic() - started:.1f}"
        )


@pytest.mark.skipif(not NETWORK_BROKER, reason="the file-system broker has no connection to cut")
def test_replay_chaos__broker_cut_mid_batch__every_dead_letter_runs_once(start_worker, capsys):
    target = urlsplit(settings.CELERY_BROKER_URL)

    def cut_the_broker(queue: str) -> None:
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
        process = command(queue, broker=broker_through(proxy))
        in_the_middle(process)
        proxy.stop()
        code, output = finish(process)
        assert code in (0, 3), output  # done before the cut, or stopped by it

    run_rounds(start_worker, capsys, "broker_cut", cut_the_broker)


@pytest.mark.skipif(
    not NETWORK_BROKER,
    reason=(
        "kombu's file-system transport writes a message file in place: a publisher SIGKILLed "
        "mid-write leaves an empty file that stops any worker reading it (JSONDecodeError, "
        "'Unrecoverable error'); a transport limit, not a replay one. Runs on Redis and RabbitMQ"
    ),
)
def test_replay_chaos__command_killed__every_dead_letter_runs_once(start_worker, capsys):
    def kill_the_command(queue: str) -> None:
        process = command(queue)
        in_the_middle(process)
        process.send_signal(signal.SIGKILL)
        finish(process)

    run_rounds(start_worker, capsys, "command_killed", kill_the_command)


def test_replay_chaos__two_commands_at_once__every_dead_letter_runs_once(start_worker, capsys):
    def race_two_commands(queue: str) -> None:
        first, second = command(queue), command(queue)
        for process in (first, second):
            code, output = finish(process)
            assert code == 0, output

    run_rounds(start_worker, capsys, "two_commands", race_two_commands)


# --- A publish cut after its bytes were written: nothing counted as sent is lost ----------


def task_ids_in(queue: str) -> set[str]:
    """Take every message out of ``queue``: their task ids."""
    return {message["headers"]["id"] for message in drain(queue)}


@pytest.mark.broker
@pytest.mark.skipif(not NETWORK_BROKER, reason="the file-system broker has no connection to cut")
def test_replay_publish_cut_after_the_write__no_replay_marked_published_is_lost():
    """The broker stops answering (bytes held, connection open), then the connection is
    cut: a replay counts as published only if the broker has it. AMQP does not answer a
    ``basic.publish`` unless confirms are on; before replays asked for them, every publish
    here returned at once and the 20 replays were marked published while their messages
    died in the cut connection (Redis answers each LPUSH: it was never affected)."""
    queue = f"djops-confirm-{uuid.uuid4().hex[:8]}"
    keys = seed(20, queue, 0)
    target = urlsplit(settings.CELERY_BROKER_URL)
    proxy = StallingProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    proxied = Celery("proxied", set_as_current=False)
    # The write URL: Celery prefers the CELERY_BROKER_URL variable to an app's broker_url.
    proxied.conf.broker_write_url = broker_through(proxy)
    proxied.conf.broker_connection_retry_on_startup = False
    proxied.conf.task_publish_retry = False
    with proxied.producer_or_acquire() as producer:  # the pool's connection, which has
        proxied.send_task("warm-up", queue=queue, producer=producer)  # declared the queue
    assert len(task_ids_in(queue)) == 1
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(replay(DeadLetter.objects.all(), by="chaos", reason="cut", app=proxied))
        except Exception as error:
            outcome.append(error)
        finally:
            connection.close()  # this thread's own

    proxy.stall()
    publishing = threading.Thread(target=run)
    publishing.start()
    time.sleep(1)
    proxy.stop()  # the held bytes die with the connection
    publishing.join(60)
    assert not publishing.is_alive() and outcome

    marked = set(Replay.objects.exclude(published_at=None).values_list("new_task_id", flat=True))
    arrived = task_ids_in(queue)
    assert marked <= arrived, f"{len(marked - arrived)} replays marked published were lost"
    # What was not confirmed stays in the outbox and goes out again, under the same ids.
    recover_replays(older_than=0)
    arrived |= task_ids_in(queue)
    assert set(Replay.objects.values_list("new_task_id", flat=True)) <= arrived
    assert Replay.objects.count() == len(keys)


@pytest.mark.broker
@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("amqp"), reason="publisher confirms are AMQP's"
)
def test_replays_go_out_with_publisher_confirms_over_amqp():
    """The test above fails (over AMQP) on the connection's stalled handshake; this one
    shows the publish itself waits for the broker's ack."""
    assert not celery_app.conf.broker_transport_options.get("confirm_publish")
    with confirming_producer(celery_app) as producer:
        assert producer.channel.connection.confirm_publish is True
