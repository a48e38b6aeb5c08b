"""Issue 12's reliability suite, the scenarios at scale: outages, kills, hostile payloads, soak.

Real prefork workers, PostgreSQL and Redis cut through ``tests.proxy.TcpProxy``. Each
scenario prints its line (``tests.test_reliability_capture.Scenario``) with its sizes.
The defaults keep the whole suite within CI's budget on two cores; bigger runs:

    DJCELERY_OPS_RELIABILITY_PG_TASKS=2000 DJCELERY_OPS_RELIABILITY_SOAK_TASKS=20000 ...

Accounting, per task: ``succeeded`` is its Effect row, ``dead-lettered`` its DeadLetter
row; ``lost`` counts tasks with neither, ``doubled`` tasks with both or with more than one
Effect, and messages still queued after the worker stopped.
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.spool import spooled_files
from djcelery_ops.models import DeadLetter
from tests.celery_app import app
from tests.proxy import TcpProxy
from tests.test_reliability_capture import Scenario, queue_depth, redis_unacked
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.reliability]


def size(name: str, default: int) -> int:
    return int(os.environ.get(f"DJCELERY_OPS_RELIABILITY_{name}", default))


def needs(vendor: str, broker: str = "") -> None:
    if connection.vendor != vendor:
        pytest.skip(f"needs {vendor} (DATABASE_URL)")
    if broker and not app.conf.broker_url.startswith(broker):
        pytest.skip(f"needs a {broker} broker (CELERY_BROKER_URL)")


def proxied_database_url(proxy: TcpProxy) -> str:
    return f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{proxy.port}/postgres"


@pytest.fixture
def redis_proxy():
    needs("postgresql", "redis")
    url = urllib.parse.urlsplit(app.conf.broker_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
    yield proxy.start()
    proxy.stop()


@pytest.fixture
def spool_env(tmp_path, settings) -> dict[str, str]:
    spool = tmp_path / "spool"
    settings.DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(spool)
    return {
        "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR": str(spool),
        "DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL": "1",
    }


class Ledger:
    """Task ids sent, by key, and how each one ended."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.failing: set[str] = set()

    def send(self, task, key: str, fail: bool) -> None:
        self.ids[key] = task.delay(key, fail).id
        if fail:
            self.failing.add(key)

    def letters(self) -> dict[str, DeadLetter]:
        rows = DeadLetter.objects.filter(task_id__in=list(self.ids.values()))
        by_id = {row.task_id: row for row in rows}
        return {key: by_id[task_id] for key, task_id in self.ids.items() if task_id in by_id}

    def effects(self) -> Counter[str]:
        return Counter(Effect.objects.filter(key__in=list(self.ids)).values_list("key", flat=True))

    def ended(self) -> int:
        return len(self.effects()) + len(self.letters())

    def outcome(self) -> tuple[int, int, int]:
        """(dead letters, lost, doubled); also checks each task ended the way it should."""
        letters, effects = self.letters(), self.effects()
        lost = sum(1 for key in self.ids if key not in letters and key not in effects)
        doubled = sum(1 for key in self.ids if key in letters and key in effects)
        doubled += sum(count - 1 for count in effects.values())
        assert set(letters) <= self.failing, "a task meant to succeed was dead-lettered"
        assert not (set(effects) & self.failing), "a failing task left an effect"
        return len(letters), lost, doubled


# --- PostgreSQL restarted while tasks fail for good -------------------------------------------


@pytest.mark.postgres
def test_postgres_restarted_while_tasks_fail__every_dead_letter_arrives_once(
    start_worker, db_proxy, spool_env, capsys
):
    count, outage = size("PG_TASKS", 200), size("PG_OUTAGE_SECONDS", 10)
    scenario = Scenario("postgres_restarted_during_failures", capsys)
    env = {"DATABASE_URL": proxied_database_url(db_proxy), **spool_env}
    worker = start_worker(env=env, concurrency=2)
    ledger = Ledger()
    for n in range(count):
        ledger.send(tasks.soak_effect, f"pg-{n}", True)
    wait_until(lambda: len(ledger.letters()) >= count // 10, what="the first dead letters")

    db_proxy.stop()
    cut_at = time.monotonic()
    wait_until(
        lambda: spooled_files() and time.monotonic() - cut_at >= outage,
        timeout=outage + 30,
        what="failures spooled during the outage",
    )
    spooled = len(spooled_files())
    db_proxy.start()  # no failure after this one is needed: the worker's timer ingests

    wait_until(lambda: len(ledger.letters()) == count, timeout=120, what="every dead letter")
    wait_until(lambda: not spooled_files(), what="the spool to be empty")
    letters = ledger.letters()
    occurrences = Counter(letter.occurrences for letter in letters.values())
    worker.stop()
    dead_letters, lost, doubled = ledger.outcome()
    repeated, left = sum(occurrences.values()) - occurrences[1], queue_depth(worker.queue)
    scenario.report(
        tasks=count, dead_letters=dead_letters, lost=lost, doubled=doubled + left + repeated,
        counted_twice=repeated, left_in_queue=left, spooled=spooled, outage_s=outage,
    )  # fmt: skip
    assert spooled > 0  # the outage did hit failures


# --- Redis cut between the worker and the broker ----------------------------------------------


# A message kombu's Redis transport popped with BRPOP and lost with the connection before
# the worker read it is in no queue, no unacked hash and no worker (kombu records a message
# as unacked only once the BRPOP reply has arrived: celery/kombu#1733, #1785). Once it has
# been nowhere this long, it stays lost; the visibility timeout (10 s) restores any other.
NOWHERE_FOR_SECONDS = 20


@pytest.mark.postgres
def test_redis_cut_mid_run__every_task_ends_once_but_the_one_brpop_was_returning(
    start_worker, redis_proxy, capsys
):
    """Every task ends once, except at most the one message the worker's BRPOP was
    receiving when its connection was cut (a transport limit of Redis, said in the README;
    seen in about 1 run in 3). Any other task left queued, unacked or in the worker fails."""
    count, outage = size("REDIS_TASKS", 500), size("REDIS_OUTAGE_SECONDS", 5)
    scenario = Scenario("redis_cut_mid_run", capsys)
    db = urllib.parse.urlsplit(app.conf.broker_url).path
    env = {
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_proxy.port}{db}",
        # Acks lost with the connection are redelivered after this; the task is idempotent.
        "DJCELERY_OPS_TEST_VISIBILITY_TIMEOUT": "10",
    }
    worker = start_worker(env=env, concurrency=2)
    ledger = Ledger()
    for n in range(count):
        ledger.send(tasks.idem_soak_effect, f"redis-{n}", n % 2 == 1)
    wait_until(lambda: ledger.ended() >= count // 5, timeout=60, what="a fifth of the tasks")

    redis_proxy.stop()
    cut_at, ended_at_cut = time.monotonic(), ledger.ended()
    wait_until(lambda: time.monotonic() - cut_at >= outage, timeout=outage + 5)
    redis_proxy.start()

    nowhere_since: dict[str, float] = {}

    def settled() -> bool:
        """Every task ended, or is nowhere and has been for NOWHERE_FOR_SECONDS."""
        places, now = _where_are(ledger, worker), time.monotonic()
        for key in set(nowhere_since) - set(places):
            del nowhere_since[key]
        for key, place in places.items():
            if place.endswith("nowhere"):
                nowhere_since.setdefault(key, now)
            else:
                nowhere_since.pop(key, None)
        return all(now - nowhere_since.get(key, now) >= NOWHERE_FOR_SECONDS for key in places)

    try:
        wait_until(settled, timeout=180, interval=0.5, what="every task to end")
    except AssertionError:
        where = _where_are(ledger, worker)
        raise AssertionError(
            f"{len(where)} of {count} tasks never ended; where they are: {where}"
        ) from None
    in_brpop = set(_where_are(ledger, worker))
    worker.stop()
    dead_letters, lost, doubled = ledger.outcome()
    scenario.report(
        tasks=count, dead_letters=dead_letters, lost=lost - len(in_brpop),
        doubled=doubled + queue_depth(worker.queue), lost_in_brpop=len(in_brpop),
        in_flight_at_cut=count - ended_at_cut, outage_s=outage,
    )  # fmt: skip
    # One consumer connection cut once: one BRPOP reply at most.
    assert len(in_brpop) <= 1, in_brpop
    assert dead_letters == count // 2 - len(in_brpop & ledger.failing)


def _where_are(ledger: Ledger, worker) -> dict[str, str]:
    """For each task that has not ended: still queued, in Redis' unacked hash (restored
    after the visibility timeout), received by the worker but not ended, or nowhere (popped
    by BRPOP and lost with the connection before kombu recorded it as unacked)."""
    ended = set(ledger.effects()) | set(ledger.letters())
    missing = {key: task_id for key, task_id in ledger.ids.items() if key not in ended}
    with app.connection_for_write() as conn:
        queued = b"".join(conn.default_channel.client.lrange(worker.queue, 0, -1))
    unacked = b"".join(redis_unacked(worker.queue))
    log = worker.log()

    def place(task_id: str) -> str:
        if task_id.encode() in queued:
            return "queued"
        if task_id.encode() in unacked:
            return "unacked"
        return "received, not ended" if f"[{task_id}] received" in log else "nowhere"

    return {key: f"{task_id}: {place(task_id)}" for key, task_id in missing.items()}


# --- NUL, lone surrogates, 50 MB ---------------------------------------------------------------


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def test_hostile_payloads__dead_lettered_capped_escaped_and_memory_bounded(start_worker, capsys):
    if app.conf.broker_url.startswith("filesystem"):
        # kombu's file-system transport lets the worker read a message file while it is
        # still being written: a 100 MB body ends the worker with a JSONDecodeError. That
        # is the development transport's limit, not the capture's; Redis and RabbitMQ run it.
        pytest.skip("the file-system broker cannot carry a 100 MB message")
    megabytes = size("PAYLOAD_MB", 50)
    scenario = Scenario("hostile_payloads", capsys)
    worker = start_worker(concurrency=1)
    [child] = wait_until(worker.child_pids, what="the pool child")
    warm = tasks.ops_add.delay(1, 1)  # imports and connections in place before measuring
    wait_until(lambda: f"[{warm.id}] succeeded" in worker.log(), what="a first task")
    before = vm_hwm_kib(child)

    big = "x" * (megabytes * 1024 * 1024)
    sent = {
        "nul": tasks.ops_raise.delay("nul \x00 here", note="a\x00b", **{"k\x00": 1}),
        "surrogate": tasks.ops_raise.delay("lone \ud800 here", note="\udfff"),
        "big": tasks.ops_raise.delay(big, note=big),
    }
    del big
    ids = {result.id: name for name, result in sent.items()}
    letters = DeadLetter.objects.filter(task_id__in=ids)
    wait_until(lambda: letters.count() == len(sent), timeout=120, what="three dead letters")
    assert worker.child_pids() == [child]  # the same child: it was not killed by memory
    grown_mib = (vm_hwm_kib(child) - before) / 1024

    by_name = {ids[letter.task_id]: letter for letter in letters}
    nul, surrogate, huge = by_name["nul"], by_name["surrogate"], by_name["big"]
    assert nul.exception_message == "nul \\u0000 here"
    assert nul.kwargs == {"note": "a\\u0000b", "k\\u0000": 1}
    assert '"note": "a\\u0000b"' in nul.options["original_payload_json"]
    assert surrogate.exception_message == "lone \\ud800 here"
    assert surrogate.kwargs == {"note": "\\udfff"}
    cap = ops_settings.DEAD_LETTER_MAX_MESSAGE_BYTES
    assert len(huge.exception_message.encode()) <= cap + 200  # head, tail and the marker
    assert huge.payload_truncated and huge.args[0]["__truncated__"]
    assert huge.args[0]["size_bytes"] > 2 * megabytes * 1024 * 1024
    # Linear in the message, never one copy per field or per retry. Measured: 554 MiB for
    # a 100 MiB message (its JSON text and decoded strings, then the capture's own copies:
    # the full traceback text, the record, json.dumps of the call before the cap).
    wire_mib = 2 * megabytes
    bound_mib = 8 * wire_mib
    assert grown_mib < bound_mib, f"pool child's peak grew {grown_mib:.0f} MiB"
    scenario.report(
        tasks=len(sent), dead_letters=letters.count(), lost=len(sent) - letters.count(),
        doubled=sum(letter.occurrences - 1 for letter in letters), payload_mb=megabytes,
        child_peak_growth_mib=round(grown_mib), bound_mib=bound_mib,
    )  # fmt: skip


# --- SIGKILL of the pool child at random points -----------------------------------------------


@pytest.mark.postgres
def test_pool_child_killed_at_random_points__idempotent_effect_once(start_worker, capsys):
    needs("postgresql", "redis")
    rounds = size("KILL_ROUNDS", 20)
    scenario = Scenario("pool_child_sigkill_rounds", capsys)
    worker = start_worker(concurrency=1)
    seed = int(os.environ.get("DJCELERY_OPS_RELIABILITY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    killed, sent = 0, {}
    for n in range(rounds):
        key = f"kill-round-{n}"
        child = wait_until(worker.child_pids, what="a pool child")[0]
        result = tasks.idem_atomic_effect.delay(key, hold=rng.uniform(0, 0.3))
        sent[key] = result.id
        wait_until(lambda r=result: f"[{r.id}] received" in worker.log(), what="delivery")
        time.sleep(rng.uniform(0, 0.4))  # the fault's random point, not a synchronisation
        try:
            os.kill(child, 9)
            killed += 1
        except ProcessLookupError:
            pass
        wait_until(
            lambda k=key, r=result: (
                Effect.objects.filter(key=k).exists()
                or DeadLetter.objects.filter(task_id=r.id).exists()
            ),
            timeout=60,
            what=f"round {n} to end",
        )
    # A child killed after its effect committed but before the ack sends the message back
    # (reject on worker lost): the worker must run that copy, and skip it, before it stops.
    # Counted as doubled before, when the last round's copy was still queued.
    wait_until(lambda: _queue_settled(worker.queue), timeout=60, what="redeliveries to run")
    worker.stop()
    letters = DeadLetter.objects.filter(task_id__in=sent.values())
    effects = Counter(Effect.objects.filter(key__in=sent).values_list("key", flat=True))
    lettered = set(letters.values_list("task_id", flat=True))
    lost = sum(1 for key, task_id in sent.items() if key not in effects and task_id not in lettered)
    left = queue_depth(worker.queue)
    doubled = sum(count - 1 for count in effects.values()) + left
    skipped = worker.log().count('"event": "idempotency.duplicate_skipped"')
    scenario.report(
        tasks=rounds, dead_letters=len(lettered), lost=lost, doubled=doubled,
        left_in_queue=left, duplicates_skipped=skipped, rounds=rounds, kills=killed, seed=seed,
    )  # fmt: skip


def _queue_settled(queue: str) -> bool:
    """Nothing of ``queue`` waits in Redis or is held unacked (reserved by a worker)."""
    return queue_depth(queue) == 0 and not redis_unacked(queue)


# --- Soak ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_soak__two_workers_every_task_ends_once(start_worker, capsys):
    needs("postgresql")
    count = size("SOAK_TASKS", 1000)
    scenario = Scenario("soak_two_workers", capsys)
    workers = [start_worker(concurrency=2) for _ in range(2)]
    ledger = Ledger()
    for n in range(count):
        ledger.send(tasks.soak_effect, f"soak-{n}", n % 10 < 3)
    wait_until(lambda: ledger.ended() >= count, timeout=240, what="every task to end")
    for worker in workers:
        worker.stop()
    dead_letters, lost, doubled = ledger.outcome()
    assert dead_letters == len(ledger.failing) == count * 3 // 10
    scenario.report(
        tasks=count, dead_letters=dead_letters, lost=lost,
        doubled=doubled + queue_depth(workers[0].queue), workers=2, failing_pct=30,
    )  # fmt: skip
