"""Idempotency on the test database: task bodies via ``apply()``, the services directly."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from djcelery_ops.idempotency.claim import (
    claim_key,
    claim_lease,
    complete_lease,
    release,
    storable_result,
)
from djcelery_ops.idempotency.execution import IdempotencyKeyBusy, lease_seconds
from djcelery_ops.idempotency.keys import (
    MAX_KEY_LENGTH,
    idempotency_headers,
    key_from_option,
    normalise_key,
)
from djcelery_ops.idempotency.unique import PendingDuplicate, acquire_enqueue_lock
from djcelery_ops.models import EnqueueLock, IdempotencyKey
from tests.testapp import tasks
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db

State = IdempotencyKey.State


@pytest.fixture
def ops_log(caplog):
    """Records of djcelery_ops' event logger (it does not propagate to the root)."""
    logger = logging.getLogger("djcelery_ops.task")
    if caplog.handler not in logger.handlers:
        logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def events(caplog, name: str) -> list[dict]:
    records = {id(r): r for r in caplog.records}.values()  # a record once per handler path
    return [r.ops for r in records if getattr(r, "ops", {}).get("event") == name]


def claim(key: str, lease: float = 60, owner: str = "t1"):
    return claim_lease(key, task_name="tests.task", owner_task_id=owner, lease_seconds=lease)


# --- keys -------------------------------------------------------------------------------------


def test_key__format_string_takes_positional_and_keyword_arguments():
    task = tasks.idem_atomic_effect
    assert key_from_option(task, ("k1",), {}) == "effect:k1"
    assert key_from_option(task, (), {"key": "k2", "hold": 1}) == "effect:k2"


def test_key__callable_option_gets_the_call_arguments_not_the_task():
    assert key_from_option(tasks.idem_callable_key, (7,), {"note": "x"}) == "order:7"


def test_key__format_string_naming_no_argument_is_a_configuration_error():
    class Fake:
        name = "fake"
        idempotency_key = "charge:{payment_id}"

        def run(self, order_id):
            return order_id

    with pytest.raises(ImproperlyConfigured, match="payment_id"):
        key_from_option(Fake(), (1,), {})


def test_key__over_the_column_size_keeps_a_prefix_and_a_hash():
    long = normalise_key("x" * 400)
    assert len(long) == MAX_KEY_LENGTH
    assert long.startswith("xxxx")
    assert long != normalise_key("x" * 401)


# --- atomic mode, task bodies -----------------------------------------------------------------


def test_atomic__duplicate_returns_the_stored_result_without_running(ops_log):
    first = tasks.idem_atomic_effect.apply(("a",), task_id="first")
    second = tasks.idem_atomic_effect.apply(("a",), task_id="second")
    assert first.get() == {"key": "a", "task_id": "first"}
    assert second.get() == {"key": "a", "task_id": "first"}
    assert Effect.objects.filter(key="a").count() == 1
    row = IdempotencyKey.objects.get(key="effect:a")
    assert (row.state, row.owner_task_id, row.token, row.mode) == (State.DONE, "first", 1, "atomic")
    assert row.result_stored and row.completed_at is not None and row.lease_expires_at is None
    [skipped] = events(ops_log, "idempotency.duplicate_skipped")
    assert skipped["task_id"] == "second" and skipped["completed_by"] == "first"


# A failing OpsTask dead-letters through capture_failure, which may close the connection:
# these run outside the test transaction.
def test_atomic__failure_rolls_back_the_writes_and_frees_the_key(transactional_db, tmp_path):
    failed = tasks.idem_atomic_fail_first.apply(("f", str(tmp_path)))
    assert failed.failed()
    assert not Effect.objects.filter(key="f").exists()
    assert not IdempotencyKey.objects.filter(key="fail:f").exists()
    again = tasks.idem_atomic_fail_first.apply(("f", str(tmp_path)))
    assert again.get() == "second run"
    assert Effect.objects.filter(key="f").count() == 1


def test_atomic__different_keys_run_independently():
    tasks.idem_atomic_effect.apply(("x",))
    tasks.idem_atomic_effect.apply(("y",))
    assert Effect.objects.filter(key__in=["x", "y"]).count() == 2


def test_header__per_call_key_makes_any_ops_task_idempotent_and_reaches_the_body():
    headers = idempotency_headers("invoice:9")
    first = tasks.idem_header_only.apply(("h",), headers=headers)
    second = tasks.idem_header_only.apply(("h",), headers=headers)
    assert first.get() == second.get() == "invoice:9"
    assert Effect.objects.filter(key="h").count() == 1
    assert tasks.idem_header_only.apply(("h",)).get() is None  # no key: runs, no dedupe
    assert Effect.objects.filter(key="h").count() == 2


def test_header__overrides_the_task_option():
    tasks.idem_atomic_effect.apply(("o",), headers=idempotency_headers("custom"))
    tasks.idem_atomic_effect.apply(("o",))
    assert Effect.objects.filter(key="o").count() == 2
    assert set(IdempotencyKey.objects.values_list("key", flat=True)) == {"custom", "effect:o"}


def test_direct_call__is_a_plain_function_call():
    assert tasks.idem_atomic_effect("d") == {"key": "d", "task_id": None}
    assert not IdempotencyKey.objects.exists()


def test_unstorable_result__key_done_but_duplicate_returns_none(settings):
    settings.DJCELERY_OPS_IDEMPOTENCY_RESULT_MAX_BYTES = 10
    assert tasks.idem_atomic_effect.apply(("big",)).get()["key"] == "big"
    assert tasks.idem_atomic_effect.apply(("big",)).get() is None
    row = IdempotencyKey.objects.get(key="effect:big")
    assert row.state == State.DONE and not row.result_stored
    assert storable_result({1, 2}) == (None, False)


def test_key_ttl__an_expired_done_key_runs_again(settings):
    settings.DJCELERY_OPS_IDEMPOTENCY_KEY_TTL_SECONDS = -1
    tasks.idem_atomic_effect.apply(("ttl",))
    tasks.idem_atomic_effect.apply(("ttl",))
    assert Effect.objects.filter(key="ttl").count() == 2
    assert IdempotencyKey.objects.get(key="effect:ttl").token == 2


def test_default_mode__comes_from_the_setting_at_call_time(transactional_db, settings):
    settings.DJCELERY_OPS_IDEMPOTENCY_DEFAULT_MODE = "lease"
    tasks.idem_header_only.apply(("m",), headers=idempotency_headers("mode:lease"))
    assert IdempotencyKey.objects.get(key="mode:lease").mode == "lease"
    settings.DJCELERY_OPS_IDEMPOTENCY_DEFAULT_MODE = "sometimes"
    result = tasks.idem_header_only.apply(("m",), headers=idempotency_headers("mode:bad"))
    assert isinstance(result.result, ImproperlyConfigured)
    assert "'atomic' or 'lease'" in str(result.result)


# --- lease mode -------------------------------------------------------------------------------


def test_lease__body_runs_once_and_the_key_reaches_the_body():
    assert tasks.idem_lease_effect.apply(("l",), task_id="one").get()["task_id"] == "one"
    assert tasks.idem_lease_effect.apply(("l",), task_id="two").get()["task_id"] == "one"
    assert list(Effect.objects.filter(key="l").values_list("task_id", flat=True)) == ["effect:l"]
    row = IdempotencyKey.objects.get(key="effect:l")
    assert (row.state, row.mode, row.lease_expires_at) == (State.DONE, "lease", None)


def test_lease__failure_marks_the_key_failed_and_a_replay_claims_it(transactional_db, tmp_path):
    assert tasks.idem_lease_fail_first.apply(("lf", str(tmp_path))).failed()
    row = IdempotencyKey.objects.get(key="fail:lf")
    assert (row.state, row.token) == (State.FAILED, 1)
    assert tasks.idem_lease_fail_first.apply(("lf", str(tmp_path))).get() == "second run"
    row.refresh_from_db()
    assert (row.state, row.token, row.attempts) == (State.DONE, 2, 2)
    assert Effect.objects.filter(key="lf").count() == 2  # lease mode cannot undo the first


def test_lease__held_key_makes_an_eager_duplicate_raise_busy(transactional_db):
    claim("effect:busy", owner="other-task")
    result = tasks.idem_lease_effect.apply(("busy",))
    assert isinstance(result.result, IdempotencyKeyBusy)
    assert result.result.owner_task_id == "other-task"
    assert 1 <= result.result.retry_in <= lease_seconds(tasks.idem_lease_effect)
    assert not Effect.objects.filter(key="busy").exists()


def test_lease__a_duplicate_looks_again_in_a_second_not_at_the_lease_end(transactional_db):
    """The first wait is one second (then as long as waited so far), whatever the lease."""
    claim("effect:soon", owner="other-task")  # a fresh lease: 60 s left
    result = tasks.idem_lease_effect.apply(("soon",))
    assert isinstance(result.result, IdempotencyKeyBusy)
    assert lease_seconds(tasks.idem_lease_effect) > 30
    assert result.result.retry_in == 1.0


def test_lease__length_is_the_hard_time_limit_plus_the_margin(settings):
    settings.DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS = 7
    assert lease_seconds(tasks.idem_lease_effect) == 5 + 7
    settings.DJCELERY_OPS_TASK_TIME_LIMIT = None
    assert lease_seconds(tasks.idem_header_only) == 3600 + 7


def test_claim__second_claim_of_a_held_lease_is_refused():
    first = claim("k")
    second = claim("k", owner="t2")
    assert first.claimed and first.token == 1
    assert not second.claimed
    assert second.existing is not None and second.existing.owner_task_id == "t1"


def test_claim__expired_lease_is_taken_over_with_a_new_token_and_fences_the_old_owner():
    old = claim("k", lease=-1)
    new = claim("k", owner="t2")
    assert new.token == old.token + 1
    assert not complete_lease("k", old.token, "late")
    assert not release("k", old.token)
    assert complete_lease("k", new.token, {"ok": True})
    row = IdempotencyKey.objects.get(key="k")
    assert (row.state, row.owner_task_id, row.result, row.attempts) == (
        State.DONE,
        "t2",
        {"ok": True},
        2,
    )


def test_claim__done_key_is_not_claimed_again():
    token = claim("k").token
    complete_lease("k", token, 1)
    again = claim("k", lease=-1)
    assert not again.claimed and again.existing.state == State.DONE


def test_claim__failed_key_is_claimable_at_once():
    token = claim("k").token
    assert release("k", token)
    assert claim("k", owner="replay").token == token + 1


def test_claim__without_lease_is_an_atomic_claim():
    result = claim_key("a", task_name="t", owner_task_id="x", lease_seconds=None)
    row = IdempotencyKey.objects.get(key="a")
    assert result.claimed and row.mode == "atomic" and row.lease_expires_at is None


def test_queries__in_flight_and_expired_leases_use_the_database_clock():
    claim("held")
    claim("expired", lease=-1)
    token = claim("done").token
    complete_lease("done", token, None)
    assert list(IdempotencyKey.objects.in_flight().values_list("key", flat=True)) == ["held"]
    assert list(IdempotencyKey.objects.expired_leases().values_list("key", flat=True)) == [
        "expired"
    ]
    assert IdempotencyKey.objects.done().count() == 1
    assert IdempotencyKey.objects.for_task("tests.task").count() == 3


# --- enqueue-time uniqueness ------------------------------------------------------------------


def test_unique__second_enqueue_while_pending_is_dropped_and_returns_the_pending_task(
    celery_queue, ops_log
):
    first = tasks.idem_unique.apply_async(("weekly",))
    second = tasks.idem_unique.apply_async(("weekly",))
    assert not isinstance(first, PendingDuplicate)
    assert isinstance(second, PendingDuplicate) and second.id == first.id
    [dropped] = events(ops_log, "unique.duplicate_dropped")
    assert dropped["pending_task_id"] == first.id
    # The pending message starts: the lock goes, the next enqueue is published.
    tasks.idem_unique.apply(("weekly",), task_id=first.id)
    assert not EnqueueLock.objects.exists()
    third = tasks.idem_unique.apply_async(("weekly",))
    assert not isinstance(third, PendingDuplicate) and third.id != first.id
    assert not isinstance(tasks.idem_unique.apply_async(("monthly",)), PendingDuplicate)


def test_unique__expired_lock_lets_the_next_enqueue_through():
    assert acquire_enqueue_lock("u", "t1", -1) is None
    assert acquire_enqueue_lock("u", "t2", 60) is None
    assert acquire_enqueue_lock("u", "t3", 60) == "t2"


@pytest.mark.parametrize(
    ("task_name", "released"),
    [
        (tasks.idem_unique.name, True),  # publishes under a lock
        ("not.registered.here", True),  # may have, for all this process knows
        (tasks.ops_raise.name, False),  # never takes one: no DELETE per dead letter
    ],
)
def test_unique__dead_letter_releases_the_lock_only_of_a_task_that_may_hold_one(
    task_name, released
):
    from djcelery_ops.signals import dead_lettered
    from tests.factories import failure_record

    assert acquire_enqueue_lock("u", "t1", 60) is None
    record = failure_record(task_id="t1", task_name=task_name)
    dead_lettered.send(type(record), record=record, stored=True)
    assert EnqueueLock.objects.filter(task_id="t1").exists() is not released


# --- admin ------------------------------------------------------------------------------------


def test_admin__lists_filters_and_searches_keys_read_only(admin_client):
    claim("charge:1")
    claim("charge:2", owner="t9")
    url = "/admin/djcelery_ops/idempotencykey/"
    page = admin_client.get(url, {"q": "charge:2", "state__exact": "running"})
    assert page.status_code == 200
    assert b"charge:2" in page.content and b"charge:1" not in page.content
    assert admin_client.get(url + "add/").status_code == 403
    pk = IdempotencyKey.objects.get(key="charge:1").pk
    assert admin_client.post(f"{url}{pk}/delete/", {"post": "yes"}).status_code == 403
    assert IdempotencyKey.objects.filter(pk=pk).exists()


def test_claim__timestamps_are_recent():
    claim("now")
    row = IdempotencyKey.objects.get(key="now")
    assert abs(row.created_at - timezone.now()) < timedelta(seconds=30)
    assert timedelta(seconds=50) < row.lease_expires_at - row.created_at <= timedelta(seconds=61)


@pytest.mark.django_db(transaction=True)
def test_per_schedule_slot__a_slot_dispatched_twice_runs_once_and_other_calls_run_keyless():
    from tests.testapp.models import ScheduleSlotRun
    from tests.testapp.tasks import record_schedule_slot

    slot = {"djcelery_ops_schedule_slot": "nightly@2026-11-23T02:00:00+00:00"}
    first = record_schedule_slot.apply(headers=slot).get()
    again = record_schedule_slot.apply(headers=slot).get()
    assert first == again
    assert ScheduleSlotRun.objects.filter(slot_key=slot["djcelery_ops_schedule_slot"]).count() == 1
    record_schedule_slot.apply().get()
    record_schedule_slot.apply().get()
    assert ScheduleSlotRun.objects.filter(slot_key="").count() == 2


@pytest.mark.django_db(transaction=True)
def test_slot_claim__an_ops_task_without_a_key_runs_each_slot_once(tmp_path):
    from tests.testapp.models import ScheduleSlotRun
    from tests.testapp.tasks import record_slot_unkeyed

    slot = {"djcelery_ops_schedule_slot": "hourly@2026-11-23T02:00:00+00:00"}
    first = record_slot_unkeyed.apply(headers=slot).get()
    again = record_slot_unkeyed.apply(headers=slot).get()
    assert first == again  # the duplicate returns the stored result
    assert ScheduleSlotRun.objects.filter(slot_key=slot["djcelery_ops_schedule_slot"]).count() == 1
    row = IdempotencyKey.objects.get(key=slot["djcelery_ops_schedule_slot"])
    assert (row.mode, row.state) == (IdempotencyKey.Mode.LEASE, State.DONE)
    record_slot_unkeyed.apply().get()
    record_slot_unkeyed.apply().get()
    assert ScheduleSlotRun.objects.filter(slot_key="").count() == 2  # not a beat dispatch


@pytest.mark.django_db(transaction=True)
def test_slot_claim__a_failed_run_frees_the_slot_for_its_retry(tmp_path):
    from tests.testapp.models import ScheduleSlotRun
    from tests.testapp.tasks import record_slot_fail_first

    slot = {"djcelery_ops_schedule_slot": "hourly@2026-11-23T03:00:00+00:00"}
    # apply() runs the retry at once, with the same headers: it claims the freed slot.
    record_slot_fail_first.apply((str(tmp_path),), headers=slot).get()
    runs = ScheduleSlotRun.objects.filter(slot_key=slot["djcelery_ops_schedule_slot"])
    assert sorted(runs.values_list("label", flat=True)) == ["attempt-0", "attempt-1"]
    assert IdempotencyKey.objects.get(key=slot["djcelery_ops_schedule_slot"]).state == State.DONE
