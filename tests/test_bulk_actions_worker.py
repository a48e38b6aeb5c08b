"""Bulk actions carried out by a real worker: from the admin's button to the last batch.

The worker that runs the action (``djcelery_ops.tasks.run_bulk_action``) consumes the test's
queue; the replayed tasks go to a second queue and a second worker, so killing the first
one's pool child kills only the action's slice. Each slice is one batch
(``DJCELERY_OPS_DEAD_LETTER_BULK_SLICE_SECONDS=0``): every batch is also a continuation.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Count
from django.urls import reverse

from djcelery_ops.deadletter import bulk
from djcelery_ops.models import BulkAction, DeadLetter, Replay
from tests.factories import dead_letter
from tests.proxy import TcpProxy, broker_through
from tests.replay_helpers import executions
from tests.utils import wait_until
from tests.worker import WorkerProcess, purge_queue

pytestmark = pytest.mark.worker

TASK = "tests.testapp.tasks.ops_replay_effect"
BATCH = 100
ONE_BATCH_SLICES = {
    "DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE": str(BATCH),
    "DJCELERY_OPS_DEAD_LETTER_BULK_SLICE_SECONDS": "0",
}
NETWORK_BROKER = settings.CELERY_BROKER_URL.startswith(("redis", "amqp"))


@pytest.fixture
def effects_worker():
    """A second worker, on a queue of its own, for the replayed tasks."""
    worker = WorkerProcess(queue=f"djops-effects-{uuid.uuid4().hex[:8]}").start()
    yield worker
    worker.stop()
    purge_queue(worker.queue)


def seed(count: int, queue: str) -> tuple[str, list[str]]:
    """``count`` dead letters of one group whose replays go to ``queue``; (fingerprint, keys)."""
    keys = [f"bulk-{n}" for n in range(count)]
    for key in keys:
        dead_letter(task_name=TASK, args=[key], kwargs={}, options={"queue": queue})
    fingerprints = set(DeadLetter.objects.values_list("fingerprint", flat=True))
    assert len(fingerprints) == 1
    return fingerprints.pop(), keys


def confirm_in_the_admin(client, fingerprint: str, verb: str = "replay") -> BulkAction:
    client.force_login(User.objects.create_superuser("oncall", password="pw"))
    url = reverse("admin:djcelery_ops_deadletter_group_action", args=[verb])
    response = client.post(f"{url}?fingerprint={fingerprint}", {"post": "yes", "reason": "fixed"})
    assert response.status_code == 302, response.content.decode()[:2000]
    return BulkAction.objects.get()


def finished(action: BulkAction, timeout: float = 120) -> BulkAction:
    wait_until(
        lambda: BulkAction.objects.get(pk=action.pk).finished, timeout=timeout,
        what="the bulk action to finish",
    )  # fmt: skip
    return BulkAction.objects.get(pk=action.pk)


def test_whole_group_from_the_admin__a_worker_replays_it_in_slices(
    client, start_worker, effects_worker
):
    fingerprint, keys = seed(1_250, effects_worker.queue)  # above the default 1,000
    start_worker(concurrency=1, env=ONE_BATCH_SLICES)

    action = finished(confirm_in_the_admin(client, fingerprint))

    assert (action.status, action.total, action.done, action.skipped) == ("done", 1250, 1250, 0)
    assert action.batches == 13 and action.by == "oncall" and not action.error
    assert executions(keys) == (1250, 0, 0)
    assert not DeadLetter.objects.exclude(status=DeadLetter.Status.RESOLVED).exists()


def test_discard_of_a_whole_group_can_be_cancelled_from_the_admin(client, start_worker):
    fingerprint, _keys = seed(1_500, "nowhere")
    slow = {**ONE_BATCH_SLICES, "DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE": "10"}
    start_worker(concurrency=1, env=slow)
    action = confirm_in_the_admin(client, fingerprint, "discard")
    wait_until(lambda: BulkAction.objects.get(pk=action.pk).done >= 50, what="some batches")

    changelist = reverse("admin:djcelery_ops_bulkaction_changelist")
    client.post(changelist, {"action": "cancel_selected", "_selected_action": [str(action.pk)]})

    action = finished(action)
    discarded = DeadLetter.objects.filter(status=DeadLetter.Status.DISCARDED).count()
    assert action.status == "cancelled" and 50 <= action.done < 1500
    assert discarded == action.done  # the figure is the rows, exactly


@pytest.mark.reliability
@pytest.mark.skipif(
    not NETWORK_BROKER,
    reason="a pool child SIGKILLed while publishing leaves an empty message file on kombu's "
    "file-system transport, which stops the worker (a transport limit; see the replay chaos)",
)
def test_bulk_replay_chaos__pool_child_killed__every_dead_letter_runs_once(
    client, start_worker, effects_worker, capsys
):
    count, kills = int(os.environ.get("DJCELERY_OPS_CHAOS_LETTERS", "150")) * 10, 4
    fingerprint, keys = seed(count, effects_worker.queue)
    worker = start_worker(concurrency=1, env=ONE_BATCH_SLICES)
    started = time.monotonic()
    action = confirm_in_the_admin(client, fingerprint)

    killed = 0
    for _kill in range(kills):
        # At a random moment inside a slice: claiming, committing, publishing, handing on.
        at = BulkAction.objects.get(pk=action.pk).done + BATCH * random.randint(1, 2)
        wait_until(
            lambda at=at: BulkAction.objects.get(pk=action.pk).done >= at
            or BulkAction.objects.get(pk=action.pk).finished,
            timeout=60, what="the next batches",
        )  # fmt: skip
        time.sleep(random.uniform(0, 0.05))
        children = worker.child_pids()
        if BulkAction.objects.get(pk=action.pk).finished or not children:
            break
        os.kill(children[0], signal.SIGKILL)
        killed += 1

    action = finished(action, timeout=180)
    once, doubled, lost = executions(keys)
    replays = Replay.objects.values("dead_letter").annotate(n=Count("pk")).filter(n__gt=1)
    with capsys.disabled():
        print(
            f"\nbulk_chaos scenario=pool_child_killed dead_letters={count} kills={killed} "
            f"done={action.done} executed_once={once} doubled={doubled} lost={lost} "
            f"seconds={time.monotonic() - started:.1f}"
        )
    assert killed >= 1  # the faults did happen
    assert (action.status, action.done, action.skipped) == ("done", count, 0)
    assert not replays.exists()  # one Replay per dead letter
    assert (once, doubled, lost) == (count, 0, 0)
    assert bulk.run_id_of(action) == Replay.objects.values_list("run_id", flat=True).first()


@pytest.mark.reliability
@pytest.mark.skipif(not NETWORK_BROKER, reason="the file-system broker has no connection to cut")
def test_bulk_replay_chaos__broker_cut_mid_action__every_dead_letter_runs_once(
    client, start_worker, effects_worker, capsys
):
    count = int(os.environ.get("DJCELERY_OPS_CHAOS_LETTERS", "150")) * 10
    fingerprint, keys = seed(count, effects_worker.queue)
    target = urlsplit(settings.CELERY_BROKER_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    try:
        env = {
            **ONE_BATCH_SLICES,
            "CELERY_BROKER_URL": broker_through(proxy),
            "DJCELERY_OPS_TEST_VISIBILITY_TIMEOUT": "10",  # Redis: an ack lost with the cut
        }
        start_worker(concurrency=1, env=env)
        started = time.monotonic()
        action = confirm_in_the_admin(client, fingerprint)
        wait_until(
            lambda: BulkAction.objects.get(pk=action.pk).done >= 3 * BATCH, what="some batches"
        )
        proxy.stop()  # the worker's consumer and its publishing both lose the broker
        time.sleep(3)
        proxy.start()
        action = finished(action, timeout=180)
    finally:
        proxy.stop()
    once, doubled, lost = executions(keys)
    with capsys.disabled():
        print(
            f"\nbulk_chaos scenario=broker_cut dead_letters={count} done={action.done} "
            f"executed_once={once} doubled={doubled} lost={lost} "
            f"seconds={time.monotonic() - started:.1f}"
        )
    assert (action.status, action.done, action.skipped) == ("done", count, 0)
    assert (once, doubled, lost) == (count, 0, 0)
