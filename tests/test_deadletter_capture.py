"""Every final failure of a task lands in one DeadLetter row, seen by a real worker."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from djcelery_ops.models import DeadLetter, DeliveryCount
from tests.celery_app import app
from tests.testapp import tasks
from tests.testapp.models import Effect
from tests.utils import wait_until

pytestmark = pytest.mark.worker

redelivering_broker = pytest.mark.skipif(
    django_settings.CELERY_BROKER_URL.startswith("filesystem"),
    reason="kombu's file-system broker cannot requeue a rejected message; runs on Redis",
)


def dead_letter(task_id: str, timeout: float = 30) -> DeadLetter:
    return wait_until(
        lambda: DeadLetter.objects.filter(task_id=task_id).first(),
        timeout=timeout,
        what=f"a dead letter for {task_id}",
    )


def test_exception_without_retry__is_dead_lettered_with_call_and_routing(worker, celery_queue):
    result = tasks.ops_raise.apply_async(
        ("card declined",), {"order": 7}, headers={"tenant": "acme"}, priority=3
    )
    letter = dead_letter(result.id)
    assert letter.task_name == "tests.testapp.tasks.ops_raise"
    assert letter.reason == DeadLetter.Reason.EXCEPTION
    assert letter.exception_class == "builtins.ValueError"
    assert letter.exception_message == "card declined"
    assert "ValueError: card declined" in letter.traceback
    assert (letter.args, letter.kwargs) == (["card declined"], {"order": 7})
    assert letter.queue == celery_queue
    assert letter.options["headers"] == {"tenant": "acme"}
    assert letter.retries == 0
    assert letter.occurrences == 1
    assert letter.status == DeadLetter.Status.PENDING
    assert letter.worker_hostname.startswith("djops-")
    assert len(letter.fingerprint) == 40


def test_dead_letter_for_exception__goes_straight_to_the_queue_without_retry(worker):
    result = tasks.ops_permanent.delay(42)
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert letter.retries == 0
    assert letter.exception_class == "djcelery_ops.exceptions.PermanentError"


def test_autoretry__exhausted_retries_are_one_dead_letter_with_the_original_error(worker):
    result = tasks.ops_always_transient.delay("transient")
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.RETRIES_EXHAUSTED
    assert letter.exception_class == "djcelery_ops.exceptions.TransientError"
    assert letter.retries == 2
    assert Effect.objects.filter(key="transient").count() == 3  # first run + 2 retries
    assert DeadLetter.objects.count() == 1


def test_manual_retry__exhausted_retries_are_dead_lettered(worker):
    result = tasks.ops_manual_retry.delay("manual")
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.RETRIES_EXHAUSTED
    assert letter.exception_class == "builtins.LookupError"
    assert letter.retries == 1


def test_retry_that_will_happen__is_not_a_dead_letter(worker):
    result = tasks.ops_transient_once.delay("once")
    wait_until(lambda: Effect.objects.filter(key="once").count() == 2, what="the retry to run")
    assert result.id in Effect.objects.filter(key="once").values_list("task_id", flat=True)
    wait_until(lambda: "succeeded" in worker.log() and result.id in worker.log())
    assert not DeadLetter.objects.exists()


def test_soft_time_limit__is_dead_lettered_with_its_reason(worker):
    result = tasks.ops_soft_limit.delay()
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.SOFT_TIME_LIMIT
    assert letter.exception_class == "billiard.exceptions.SoftTimeLimitExceeded"


def test_hard_time_limit__is_dead_lettered_once_from_the_main_process(worker):
    result = tasks.ops_hard_limit.delay()
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.HARD_TIME_LIMIT
    assert letter.exception_class == "billiard.exceptions.TimeLimitExceeded"
    assert letter.worker_hostname.startswith("djops-")
    assert letter.task_name == "tests.testapp.tasks.ops_hard_limit"
    assert letter.occurrences == 1


def test_worker_child_killed_without_reject_on_worker_lost__is_dead_lettered(worker):
    result = tasks.ops_kill_child.delay()
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.WORKER_LOST
    assert letter.exception_class == "billiard.exceptions.WorkerLostError"


def test_unregistered_task_name__is_dead_lettered_with_its_arguments(worker, celery_queue):
    result = app.send_task("tests.testapp.tasks.renamed_long_ago", args=[1, "a"], kwargs={"b": 2})
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.UNREGISTERED
    assert letter.task_name == "tests.testapp.tasks.renamed_long_ago"
    assert (letter.args, letter.kwargs) == ([1, "a"], {"b": 2})
    assert letter.queue == celery_queue


def test_rejected_content_type__is_dead_lettered_without_being_deserialized(worker):
    result = tasks.ops_add.apply_async((1, 2), serializer="pickle")
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.REJECTED_MESSAGE
    assert letter.options["content_type"] == "application/x-python-serialize"
    assert letter.options["raw_body"]
    assert letter.args == []
    assert "ContentDisallowed" in letter.exception_class


def test_task_rejecting_its_message__is_dead_lettered(worker):
    result = tasks.ops_reject.delay()
    letter = dead_letter(result.id)
    assert letter.reason == DeadLetter.Reason.REJECTED_BY_TASK
    assert letter.exception_message == "cannot handle this message"


def test_plain_shared_task__is_caught_by_the_task_failure_backstop(worker):
    result = tasks.plain_raise.delay("sku-1")
    letter = dead_letter(result.id)
    assert letter.task_name == "tests.testapp.tasks.plain_raise"
    assert letter.exception_class == "builtins.KeyError"
    assert letter.reason == DeadLetter.Reason.EXCEPTION


def test_same_task_id_failing_again__updates_one_row(worker):
    first = tasks.ops_raise.apply_async(("again",), task_id="fixed-id-1")
    dead_letter(first.id)
    tasks.ops_raise.apply_async(("again",), task_id="fixed-id-1")
    wait_until(
        lambda: DeadLetter.objects.get(task_id="fixed-id-1").occurrences == 2,
        what="the second occurrence",
    )
    assert DeadLetter.objects.count() == 1


@redelivering_broker
def test_poison_message__is_dead_lettered_after_max_deliveries_not_looping_forever(
    start_worker, settings
):
    worker = start_worker(env={"DJCELERY_OPS_DEAD_LETTER_MAX_DELIVERIES": "3"})
    result = tasks.ops_poison.delay("poison")
    letter = dead_letter(result.id, timeout=60)
    assert letter.reason == DeadLetter.Reason.TOO_MANY_DELIVERIES
    assert Effect.objects.filter(key="poison").count() == 3
    assert DeliveryCount.objects.get(task_id=result.id).deliveries == 3
    assert worker.child_pids()  # the worker itself survived every loss
