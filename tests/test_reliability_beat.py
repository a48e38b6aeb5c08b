"""Two real beat processes and a real worker under faults: every slot runs exactly once.

Each beat reaches PostgreSQL and Redis through proxies of its own, so a test can cut the
leader's database, stall its broker (bytes held, connections open: a publish that hangs) or
freeze it with SIGSTOP inside a publish, while the other beat and the worker go on. The
task is an ``OpsTask`` that did NOT opt into ``per_schedule_slot``: it writes one row per
execution, and the fence is the slot claim plus the leader's lease term.

Counted per scenario: ``slots`` (distinct slots executed), ``executions`` (rows),
``doubled`` (slots executed more than once), ``lost`` (slots a beat logged as sending, and
did not take back, that never executed) and ``not_sent`` (publishes taken back before they
began). Needs PostgreSQL and Redis (DATABASE_URL, CELERY_BROKER_URL).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from djcelery_ops.idempotency.models import IdempotencyKey
from djcelery_ops.schedules import leader
from djcelery_ops.schedules.scheduler import slot_task_id
from tests.beat import BeatProcess, StallingProxy
from tests.celery_app import app as celery_app
from tests.proxy import TcpProxy
from tests.test_reliability_capture import redis_unacked
from tests.testapp.models import ScheduleSlotRun
from tests.utils import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.worker, pytest.mark.postgres]

LEASE_SECONDS = 3
ROUNDS = 4
TASK_NAME = "every-second"
SLOT = r"(every-second@[0-9T:.+\-]+)"
SENT = re.compile(rf"sending every-second \([^)]*\), slot {SLOT}")
# A leader frozen after logging "sending" but before its publish began wakes past its
# deadline and takes the publish back: nothing reaches the broker, and it says so.
NOT_SENT = re.compile(rf"slot {SLOT} was not sent")


@dataclass
class Beat:
    process: BeatProcess
    database: TcpProxy
    broker: StallingProxy


@pytest.fixture
def real_services():
    if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("needs PostgreSQL and Redis (DATABASE_URL, CELERY_BROKER_URL)")


def _redis_target() -> tuple[str, int, str]:
    match = re.match(r"redis://([^:/]+):(\d+)(/\d+)?", settings.CELERY_BROKER_URL)
    assert match, settings.CELERY_BROKER_URL
    return match.group(1), int(match.group(2)), match.group(3) or "/0"


@pytest.fixture
def every_seconds() -> int:
    return 1


@pytest.fixture
def two_beats(real_services, start_worker, celery_queue, every_seconds) -> Iterator[list[Beat]]:
    start_worker(concurrency=2)
    every_second = IntervalSchedule.objects.create(
        every=every_seconds, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.create(
        name=TASK_NAME,
        task="tests.testapp.tasks.record_slot_unkeyed",
        interval=every_second,
        queue=celery_queue,
    )
    db = connection.settings_dict
    redis_host, redis_port, redis_db = _redis_target()
    beats = []
    for _ in range(2):
        database = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)).start()
        broker = StallingProxy(redis_host, redis_port).start()
        env = {
            "DATABASE_URL": f"postgres://{db['USER']}@127.0.0.1:{database.port}/postgres",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{broker.port}{redis_db}",
            "DJCELERY_OPS_TEST_BEAT_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        beats.append(Beat(BeatProcess(queue=celery_queue, env=env).start(), database, broker))
    try:
        yield beats
    finally:
        for beat in beats:
            beat.broker.resume()
            if beat.process.alive():
                beat.process.resume()
            beat.process.stop()
            beat.database.stop()
            beat.broker.stop()


def _leader(beats: list[Beat]) -> Beat | None:
    state = leader.lease_state("default")
    if state is None or not state.is_held:
        return None
    pid = leader.holder_pid(state.holder)
    return next((b for b in beats if b.process.pid == pid), None)


def _executed_after(moment: float) -> int:
    return ScheduleSlotRun.objects.filter(created_at__gt=_aware(moment)).count()


def _aware(moment: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC)


def _last_run_at():
    return PeriodicTask.objects.get(name=TASK_NAME).last_run_at


def _handover(beats: list[Beat], old: Beat) -> Beat:
    """Wait for the other beat to lead and to run two slots of its own."""
    new = wait_until(
        lambda: (b := _leader(beats)) is not None and b is not old and b,
        timeout=LEASE_SECONDS * 4,
        what="the standby to take the lease",
    )
    since = time.time()
    wait_until(lambda: _executed_after(since) >= 2, timeout=15, what="runs by the new leader")
    return new


def _wait_for_a_publish_attempt(beat: Beat, sent_before: int, timeout: float = 15) -> None:
    wait_until(
        lambda: len(SENT.findall(beat.process.log())) > sent_before,
        timeout=timeout,
        what="the leader to start a publish",
    )


def _drain(celery_queue: str) -> None:
    """Every message published (late ones included) is consumed and its claim finished."""
    with celery_app.connection_for_write() as conn:
        client = conn.default_channel.client

        def unacked_here() -> list[tuple[str, str]]:
            # Task id and ETA of each: a message held for a later retry says so.
            held = [json.loads(raw)[0] for raw in redis_unacked(celery_queue)]
            return [(m["headers"].get("id"), m["headers"].get("eta")) for m in held]

        def left() -> dict[str, object]:
            running = IdempotencyKey.objects.filter(state=IdempotencyKey.State.RUNNING)
            return {
                "queued": client.llen(celery_queue),
                "unacked": unacked_here(),
                "running": list(running.values_list("key", "lease_expires_at")),
            }

        def drained() -> bool:
            return not any(left().values())

        # Patience for the tail, not the assertion: a late publish of the stalled leader and
        # a resent burst's duplicates (same task ids, retried while the first holds the
        # slot's lease) are consumed after the beats stop. 30 s ran out once in a full run.
        try:
            wait_until(drained, timeout=90, what="the queue to drain")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; still there: {left()}") from None


def _report(capsys, scenario: str, beats: list[Beat], rounds: int, started: float) -> None:
    rows = list(ScheduleSlotRun.objects.values_list("slot_key", "task_id"))
    per_slot = Counter(slot for slot, _task_id in rows)
    logs = [beat.process.log() for beat in beats]
    sends = Counter(slot for log in logs for slot in SENT.findall(log))
    taken_back = Counter(slot for log in logs for slot in NOT_SENT.findall(log))
    # A slot taken back every time it was sent never reached the broker: the next leader
    # folded it into its latest due slot, as beat folds runs it missed.
    sent = {slot for slot, n in sends.items() if n > taken_back[slot]}
    doubled = sorted(slot for slot, n in per_slot.items() if n > 1)
    lost = sorted(sent - set(per_slot))
    seconds = round(time.monotonic() - started)
    with capsys.disabled():
        print(
            f"\nscenario={scenario} rounds={rounds} slots={len(per_slot)} "
            f"executions={len(rows)} doubled={len(doubled)} lost={len(lost)} "
            f"not_sent={sum(taken_back.values())} seconds={seconds}"
        )
    assert doubled == [], f"slots executed twice: {doubled}"
    assert lost == [], f"slots sent but never executed: {lost}"
    assert all(task_id == slot_task_id(slot) for slot, task_id in rows)
    assert len(per_slot) > rounds  # the runs went on through every failover


def _run_rounds(
    capsys,
    scenario: str,
    beats: list[Beat],
    celery_queue: str,
    fault: Callable[..., Beat],
    rounds: int = ROUNDS,
) -> None:
    started = time.monotonic()
    current = wait_until(lambda: _leader(beats), timeout=30, what="a beat to lead")
    wait_until(lambda: ScheduleSlotRun.objects.count() >= 2, what="the first runs")
    for round_number in range(rounds):
        other = next(b for b in beats if b is not current)
        new = fault(beats, current, round_number)
        assert new is other, f"round {round_number}: the lease did not move"
        current = new
    for beat in beats:
        beat.process.stop()
    _drain(celery_queue)
    _report(capsys, scenario, beats, rounds, started)


def test_leader_loses_its_database__each_slot_runs_once(two_beats, celery_queue, capsys):
    def cut_database(beats: list[Beat], old: Beat, _round: int) -> Beat:
        old.database.stop()
        try:
            return _handover(beats, old)
        finally:
            old.database.start()  # the same port: it comes back as a standby

    _run_rounds(capsys, "database_cut", two_beats, celery_queue, cut_database)


def test_leader_broker_stalls_mid_publish__each_slot_runs_once(two_beats, celery_queue, capsys):
    def stall_broker(beats: list[Beat], old: Beat, _round: int) -> Beat:
        sent = len(SENT.findall(old.process.log()))
        old.broker.stall()
        try:
            _wait_for_a_publish_attempt(old, sent)
            return _handover(beats, old)
        finally:
            old.broker.resume()  # its held publish reaches Redis now, late

    _run_rounds(capsys, "broker_stall", two_beats, celery_queue, stall_broker)


def test_leader_frozen_inside_a_publish__each_slot_runs_once(two_beats, celery_queue, capsys):
    def freeze_in_publish(beats: list[Beat], old: Beat, round_number: int) -> Beat:
        sent = len(SENT.findall(old.process.log()))
        stops = old.process.log().count("stops dispatching")
        old.broker.stall()
        _wait_for_a_publish_attempt(old, sent)
        old.process.pause()  # SIGSTOP inside the tick, its message on the way
        try:
            new = _handover(beats, old)
            newest_run = _last_run_at()
        finally:
            if round_number % 2:
                old.process.resume()  # wakes past its deadline, message still held...
                old.broker.resume()  # ...which then reaches Redis late
            else:
                old.broker.resume()  # the message reaches Redis in the new term...
                old.process.resume()  # ...and the old leader wakes to its publish done
        # It must step down without writing its older last_run_at back.
        wait_until(
            lambda: old.process.log().count("stops dispatching") > stops, what="the old leader"
        )
        since = time.time()
        wait_until(lambda: _executed_after(since) >= 2, timeout=15, what="runs go on")
        assert _leader(beats) is new
        assert _last_run_at() > newest_run  # never written back
        return new

    _run_rounds(capsys, "sigstop_in_tick", two_beats, celery_queue, freeze_in_publish)


@pytest.mark.parametrize("every_seconds", [10])
def test_leader_loses_its_database_between_publish_and_save__the_slot_sent_again_runs_once(
    two_beats, celery_queue, capsys, every_seconds
):
    """The new leader sends the same slot again (it is still the latest due one): only the
    worker's slot claim stands between that copy and a second run."""

    def cut_after_publish(beats: list[Beat], old: Beat, _round: int) -> Beat:
        sent = SENT.findall(old.process.log())
        old.broker.stall()  # the next publish waits here...
        _wait_for_a_publish_attempt(old, len(sent))
        slot = SENT.findall(old.process.log())[len(sent)]
        old.database.stop()  # ...the database goes...
        old.broker.resume()  # ...the publish completes, the save of last_run_at cannot
        try:
            new = wait_until(
                lambda: (b := _leader(beats)) is not None and b is not old and b,
                timeout=LEASE_SECONDS * 4,
                what="the standby to take the lease",
            )
            wait_until(
                lambda: slot in SENT.findall(new.process.log()),
                timeout=15,
                what="the new leader to send the same slot again",
            )
            sent_by_new = len(SENT.findall(new.process.log()))
            # It saved that run and goes on: its next slot is a whole interval away.
            _wait_for_a_publish_attempt(new, sent_by_new, timeout=every_seconds + 15)
            return new
        finally:
            old.database.start()

    _run_rounds(
        capsys, "database_cut_after_publish", two_beats, celery_queue, cut_after_publish, rounds=2
    )
