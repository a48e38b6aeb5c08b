"""Effects happen once with real worker processes: duplicates, killed children, redelivery."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.db.models import Count

from djcelery_ops.models import DeadLetter, DeliveryCount, IdempotencyKey
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = pytest.mark.worker

redelivering_broker = pytest.mark.skipif(
    django_settings.CELERY_BROKER_URL.startswith("filesystem"),
    reason="kombu's file-system broker cannot requeue a rejected message; runs on Redis",
)
redis_broker = pytest.mark.skipif(
    not django_settings.CELERY_BROKER_URL.startswith("redis"),
    reason="the visibility timeout is a Redis transport option",
)

# Leases are the task's hard time limit plus this margin: short, so a lease held by a
# killed child expires within seconds.
LEASE_ENV = {"DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS": "1"}

MODES = pytest.mark.parametrize("mode", ["atomic", "lease"])


def effects_per_key(keys: list[str]) -> dict[str, int]:
    rows = Effect.objects.filter(key__in=keys).values("key").annotate(n=Count("id"))
    return {row["key"]: row["n"] for row in rows}


def done_keys(prefix: str) -> int:
    return IdempotencyKey.objects.filter(key__startswith=prefix, state="done").count()


def events(workers, event: str) -> int:
    return sum(worker.log().count(f'"event": "{event}"') for worker in workers)


@MODES
def test_same_key_delivered_to_two_workers_at_once__one_effect_per_key(start_worker, mode):
    task = {"atomic": tasks.idem_atomic_effect, "lease": tasks.idem_lease_effect}[mode]
    workers = [start_worker(concurrency=2, env=LEASE_ENV) for _ in range(2)]
    keys = [f"dup-{mode}-{i}" for i in range(12)]
    for i, key in enumerate(keys):
        # Even keys: the very same message twice (same task id); odd: two enqueues.
        task.apply_async((key, 0.3), task_id=f"{key}-a")
        task.apply_async((key, 0.3), task_id=f"{key}-a" if i % 2 == 0 else f"{key}-b")
    wait_until(lambda: done_keys(f"effect:dup-{mode}-") == len(keys), timeout=90, what="keys")
    wait_until(
        lambda: events(workers, "idempotency.duplicate_skipped") == len(keys),
        timeout=60,
        what="every duplicate to be skipped",
    )
    assert effects_per_key(keys) == dict.fromkeys(keys, 1)
    assert not DeadLetter.objects.exists()


@redelivering_broker
@MODES
def test_child_killed_mid_task_50_rounds__every_task_completes_once(start_worker, mode, tmp_path):
    task = {"atomic": tasks.idem_atomic_kill_once, "lease": tasks.idem_lease_kill_once}[mode]
    workers = [start_worker(concurrency=2, env=LEASE_ENV) for _ in range(2)]
    keys = [f"kill-{mode}-{i}" for i in range(50)]
    results = [task.delay(key, str(tmp_path)) for key in keys]
    wait_until(
        lambda: done_keys(f"kill:kill-{mode}-") == len(keys),
        timeout=240,
        interval=0.5,
        what="every task to complete after its kill",
    )
    assert effects_per_key(keys) == dict.fromkeys(keys, 1)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(keys)  # 50 kills
    lost = DeliveryCount.objects.filter(task_id__in=[r.id for r in results])
    assert lost.count() == len(keys) and {c.deliveries for c in lost} == {1}
    assert not DeadLetter.objects.exists()
    assert all(worker.child_pids() for worker in workers)


@redis_broker
@MODES
def test_task_longer_than_the_visibility_timeout__redelivered_copy_does_not_run_the_body(
    start_worker, mode
):
    task = {"atomic": tasks.idem_atomic_slow, "lease": tasks.idem_lease_slow}[mode]
    env = {**LEASE_ENV, "DJCELERY_OPS_TEST_VISIBILITY_TIMEOUT": "2"}
    workers = [start_worker(concurrency=2, env=env) for _ in range(2)]
    result = task.delay(f"slow-{mode}", 6)
    wait_until(lambda: done_keys(f"slow:slow-{mode}") == 1, timeout=60, what="the slow task")
    wait_until(
        lambda: events(workers, "idempotency.duplicate_skipped") >= 1,
        timeout=60,
        what="the redelivered copy to be skipped",
    )
    received = sum(w.log().count(f"[{result.id}] received") for w in workers)
    assert received >= 2  # the message was delivered again while the first copy ran
    assert Effect.objects.filter(key=f"slow-{mode}").count() == 1
    assert IdempotencyKey.objects.get(key=f"slow:slow-{mode}").token == 1
