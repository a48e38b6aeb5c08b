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
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from djcelery_ops.deadletter.services import interrupted_replays
from djcelery_ops.models import DeadLetter, IdempotencyKey, Replay
from tests.factories import dead_letter
from tests.proxy import TcpProxy
from tests.testapp.models import Effect
from tests.utils import wait_until
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


def executions(keys: list[str]) -> tuple[int, int, int]:
    """(executed once, doubled, lost) once every replay has an outcome."""
    wait_until(
        lambda: not Replay.objects.filter(outcome=Replay.Outcome.PENDING).exists(),
        timeout=120, what="every replay to finish",
    )  # fmt: skip
    counts = Counter(Effect.objects.values_list("key", flat=True))
    once = sum(1 for key in keys if counts[key] == 1)
    doubled = sum(1 for key in keys if counts[key] > 1)
    lost = sum(1 for key in keys if counts[key] == 0)
    return once, doubled, lost


def clear() -> None:
    for model in (Effect, Replay, DeadLetter, IdempotencyKey):
        model.objects.all().delete()


def broker_through(proxy: TcpProxy) -> str:
    parts = urlsplit(settings.CELERY_BROKER_URL)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


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
