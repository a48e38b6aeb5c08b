"""The replay service: faithful republish, at most once, lineage, compensation on failure."""

from __future__ import annotations

import datetime
import threading

import pytest
from celery import Celery
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from djcelery_ops.deadletter.lineage import resolve_replay
from djcelery_ops.deadletter.services import (
    ReplayError,
    Selection,
    discard,
    interrupted_replays,
    plan,
    publish_options,
    purge,
    recover_replays,
    replay,
)
from djcelery_ops.deadletter.store import store_record
from djcelery_ops.models import DeadLetter, Discard, Replay
from tests.factories import dead_letter, failure_record
from tests.replay_helpers import drain


@pytest.fixture
def publishing(django_capture_on_commit_callbacks):
    """Run the on-commit publish of the test's (rolled back) transaction."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.mark.django_db
def test_replay__republishes_with_new_id_stored_routing_and_replay_header(celery_queue, publishing):
    letter = dead_letter(
        task_name="shop.tasks.charge",
        args=[7],
        kwargs={"amount": 3},
        queue=celery_queue,
        retries=4,
        options={
            "queue": celery_queue,
            "priority": 5,
            "headers": {"tenant": "acme", "djcelery_ops_replay_of": "999"},
            "root_id": "root-1",
            "parent_id": "parent-1",
            "eta": "2020-01-01T00:00:00+00:00",
            "expires": "2020-01-02T00:00:00+00:00",
            "time_limit": 30,
            "soft_time_limit": 20,
        },
    )
    with publishing():
        outcome = replay([letter], by="ops", reason="fixed the card gateway")

    assert outcome.done == 1 and outcome.per_task == {"shop.tasks.charge": 1}
    [message] = drain(celery_queue)
    headers = message["headers"]
    assert headers["task"] == "shop.tasks.charge"
    assert headers["id"] == outcome.new_task_ids[0] != letter.task_id
    assert headers["retries"] == 0
    assert headers["eta"] is None and headers["expires"] is None
    assert headers["tenant"] == "acme"
    assert headers["djcelery_ops_replay_of"] == str(letter.pk)
    assert headers["root_id"] == "root-1" and headers["parent_id"] == "parent-1"
    assert headers["timelimit"] == [30, 20]
    assert message["priority"] == 5
    assert (message["args"], message["kwargs"]) == ([7], {"amount": 3})
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REPLAYED
    row = Replay.objects.get()
    assert (row.dead_letter, row.by, row.reason, row.user) == (
        letter,
        "ops",
        "fixed the card gateway",
        None,
    )
    assert row.new_task_id == headers["id"] and row.outcome == Replay.Outcome.PENDING


@pytest.mark.django_db
def test_replay__same_rows_twice_publishes_once_and_says_why_skipped(celery_queue, publishing):
    letters = [dead_letter(queue=celery_queue, options={"queue": celery_queue}) for _ in range(3)]
    with publishing():
        first = replay(letters, by="a", reason="first")
    with publishing():
        second = replay(letters, by="b", reason="second")
    assert (first.done, second.done) == (3, 0)
    assert second.skipped == {"already replayed": 3}
    assert len(drain(celery_queue)) == 3
    assert Replay.objects.count() == 3


@pytest.mark.django_db
def test_replay__statements_per_batch_do_not_grow_with_the_batch(celery_queue, publishing):
    """Claim (reading what publishing needs), one insert of the Replay rows, the published
    mark: no statement per dead letter (issue 18: per-message overhead)."""
    few = [dead_letter(queue=celery_queue, options={"queue": celery_queue}) for _ in range(2)]
    many = [dead_letter(queue=celery_queue, options={"queue": celery_queue}) for _ in range(25)]
    counted = []
    for letters in (few, many):
        with CaptureQueriesContext(connection) as queries, publishing():
            outcome = replay(letters, by="ops", reason="count", batch_size=100)
        assert (outcome.done, outcome.published) == (len(letters), len(letters))
        counted.append(len(queries.captured_queries))
    assert counted[0] == counted[1]
    assert len(drain(celery_queue)) == 27
    rows = Replay.objects.filter(dead_letter__in=many)
    assert rows.count() == 25
    values = rows.values_list("by", "reason", "outcome", "edits", "user")
    assert all(row == ("ops", "count", Replay.Outcome.PENDING, {}, None) for row in values)
    assert not rows.filter(published_at=None).exists()
    assert rows.values("created_at").distinct().count() == 1  # one batch, one moment


@pytest.mark.django_db
def test_replay__edited_args_are_published_and_the_diff_stored(celery_queue, publishing):
    letter = dead_letter(args=[1], kwargs={"amount": 10}, options={"queue": celery_queue})
    user = User.objects.create_user("alice")
    with publishing():
        replay([letter], by=user, reason="amount typo", args=[1], kwargs={"amount": 100})
    [message] = drain(celery_queue)
    assert message["kwargs"] == {"amount": 100}
    row = Replay.objects.get()
    assert row.user == user and row.by == "alice"
    assert row.edits == {"kwargs": {"old": {"amount": 10}, "new": {"amount": 100}}}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ({"a": 1}, None, "args must be a list"),
        (None, [1], "kwargs must be an object"),
        ("[1]", None, "args must be a list"),
    ],
)
def test_replay__edited_args_of_wrong_type_are_refused(args, kwargs, error):
    letter = dead_letter()
    with pytest.raises(TypeError, match=error):
        replay([letter], by="ops", reason="x", args=args, kwargs=kwargs)
    assert DeadLetter.objects.get().status == DeadLetter.Status.PENDING
    assert not Replay.objects.exists()


@pytest.mark.django_db
def test_replay__blank_reason_is_refused():
    with pytest.raises(ValueError, match="a reason is required"):
        replay([dead_letter()], by="ops", reason="  ")
    assert DeadLetter.objects.get().status == DeadLetter.Status.PENDING


@pytest.mark.django_db
def test_replay__truncated_payload_is_skipped_unless_args_are_given(
    settings, celery_queue, publishing
):
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_PAYLOAD_BYTES = 100
    letter = dead_letter(args=["x" * 500], options={"queue": celery_queue})
    assert letter.payload_truncated
    with publishing():
        outcome = replay([letter], by="ops", reason="retry")
    assert (outcome.done, outcome.skipped) == (0, {"payload truncated": 1})
    assert drain(celery_queue) == []
    assert DeadLetter.objects.get().status == DeadLetter.Status.PENDING

    with publishing():
        outcome = replay([letter], by="ops", reason="re-entered", args=["short"], kwargs={})
    assert outcome.done == 1
    assert drain(celery_queue)[0]["args"] == ["short"]


@pytest.mark.django_db
def test_replay__broker_down_keeps_the_claims_in_the_outbox_and_recovery_publishes_them_once(
    celery_queue, publishing
):
    letters = [dead_letter(options={"queue": celery_queue}) for _ in range(2)]
    down = Celery("down", broker="redis://127.0.0.1:1/0", set_as_current=False)
    down.conf.broker_write_url = "redis://127.0.0.1:1/0"  # CELERY_BROKER_URL would win
    down.conf.broker_connection_timeout = 0.5
    down.conf.task_publish_retry_policy = {"max_retries": 0}
    with pytest.raises(ReplayError, match="failed after 0 of 2 replays") as caught, publishing():
        replay(letters, by="ops", reason="retry", app=down)
    assert (caught.value.published, caught.value.unconfirmed) == (0, 2)
    assert caught.value.outcome.done == 2 and caught.value.outcome.published == 0
    # Claimed for good: no second replay can take them, and nothing was lost either.
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"replayed"}
    outbox = list(Replay.objects.order_by("pk").values_list("new_task_id", flat=True))
    assert len(outbox) == 2 and interrupted_replays(older_than=0).count() == 2
    assert replay(letters, by="ops", reason="again").done == 0
    with publishing():
        assert recover_replays(older_than=0) == 2
    sent = drain(celery_queue)
    assert sorted(message["headers"]["id"] for message in sent) == sorted(outbox)  # same ids
    assert not interrupted_replays(older_than=0).exists()
    with publishing():
        assert recover_replays(older_than=0) == 0


@pytest.mark.django_db
def test_recovery__waits_for_a_young_replay_that_another_process_may_still_publish(publishing):
    letter = dead_letter()
    Replay.objects.create(dead_letter=letter, by="x", reason="r", run_id="r", new_task_id="t1")
    assert interrupted_replays().count() == 0  # younger than the recovery delay
    assert interrupted_replays(older_than=0).count() == 1


@pytest.mark.django_db
def test_replay__unknown_task_name_is_published_by_name(celery_queue, publishing):
    letter = dead_letter(task_name="elsewhere.tasks.not_here", options={"queue": celery_queue})
    with publishing():
        replay([letter], by="ops", reason="other service")
    assert drain(celery_queue)[0]["headers"]["task"] == "elsewhere.tasks.not_here"


def test_publish_options__queue_override_and_no_eta_or_expires():
    letter = DeadLetter(
        pk=3, queue="a", options={"queue": "a", "eta": "x", "expires": "y", "headers": {"t": 1}}
    )
    options = publish_options(letter, queue="b")
    assert options["queue"] == "b"
    assert "eta" not in options and "expires" not in options
    assert options["headers"] == {"t": 1, "djcelery_ops_replay_of": "3"}


@pytest.mark.django_db
def test_success_of_replay__resolves_the_letter_and_its_ancestors(publishing, celery_queue):
    first = dead_letter(options={"queue": celery_queue})
    with publishing():
        outcome = replay([first], by="ops", reason="1st")
    # The replay failed for good: a new dead letter that names the replay it came from.
    second = store_record(
        failure_record(
            task_id=outcome.new_task_ids[0],
            options={"queue": celery_queue, "headers": {"djcelery_ops_replay_of": str(first.pk)}},
        )
    )
    assert second.replay_of == Replay.objects.get(dead_letter=first)
    assert second.replay_of.outcome == Replay.Outcome.FAILED
    with publishing():
        again = replay([second], by="ops", reason="2nd")
    assert resolve_replay(again.new_task_ids[0])
    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "resolved", second.pk: "resolved"}
    assert Replay.objects.get(dead_letter=second).outcome == Replay.Outcome.SUCCEEDED
    assert resolve_replay("not-a-replay") is False


@pytest.mark.django_db
def test_discard__marks_pending_rows_and_records_who_and_why():
    pending, resolved = dead_letter(), dead_letter()
    DeadLetter.objects.filter(pk=resolved.pk).update(status="resolved")
    outcome = discard([pending, resolved, 123456], by="ops", reason="customer gone")
    assert outcome.done == 1
    assert outcome.skipped == {"already resolved": 1, "not found": 1}
    assert DeadLetter.objects.get(pk=pending.pk).status == "discarded"
    assert Discard.objects.get().reason == "customer gone"
    assert discard([pending], by="ops", reason="again").done == 0


@pytest.mark.django_db
def test_plan__counts_per_task_and_skipped_rows():
    dead_letter(task_name="a")
    dead_letter(task_name="a")
    dead_letter(task_name="b")
    done = dead_letter(task_name="b")
    DeadLetter.objects.filter(pk=done.pk).update(status="discarded")
    result = plan(DeadLetter.objects.all())
    assert (result.total, result.applicable) == (4, 3)
    assert result.per_task == [("a", 2), ("b", 1)]
    assert result.skipped == [("already discarded", 1)]


@pytest.mark.django_db
def test_selection__filters_combine_and_bad_values_are_refused():
    old = timezone.now() - datetime.timedelta(days=10)
    a = dead_letter(task_name="a", queue="q1", failed_at=old.isoformat())
    dead_letter(task_name="a", queue="q2")
    dead_letter(task_name="b", queue="q1", reason="worker_lost")
    assert list(Selection(task="a", queue="q1").queryset()) == [a]
    assert Selection(failure_reason="worker_lost").queryset().count() == 1
    assert Selection(until=timezone.now() - datetime.timedelta(days=5)).queryset().count() == 1
    assert Selection(limit=2).queryset().count() == 2
    assert Selection(task="a' OR 1=1 --").queryset().count() == 0
    with pytest.raises(ValueError, match="unknown failure reason 'nope'"):
        Selection(failure_reason="nope")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        Selection(limit=0)


@pytest.mark.django_db
def test_purge__deletes_old_closed_rows_in_batches_only():
    rows = [dead_letter() for _ in range(5)]
    DeadLetter.objects.filter(pk__in=[r.pk for r in rows[:4]]).update(
        status="resolved", updated_at=timezone.now() - datetime.timedelta(days=40)
    )
    DeadLetter.objects.filter(pk=rows[4].pk).update(
        updated_at=timezone.now() - datetime.timedelta(days=40)
    )
    cutoff = timezone.now() - datetime.timedelta(days=30)
    assert purge(before=cutoff, statuses=["resolved"], dry_run=True) == 4
    assert purge(before=cutoff, statuses=["resolved"], batch_size=3) == 4
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [rows[4].pk]
    with pytest.raises(ValueError, match="cannot purge status pending"):
        purge(before=cutoff, statuses=["pending"])


@pytest.mark.django_db(transaction=True)
def test_replay__concurrent_replays_of_the_same_rows_publish_each_once(celery_queue):
    letters = [dead_letter(options={"queue": celery_queue}) for _ in range(200)]
    ids = [letter.pk for letter in letters]
    barrier = threading.Barrier(2)
    outcomes, errors = [], []

    def run(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(replay(ids, by=name, reason="race", batch_size=50))
        except Exception as error:  # reported below, a thread cannot fail the test itself
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(outcome.done for outcome in outcomes) == 200
    messages = drain(celery_queue)
    assert len(messages) == 200
    assert len({m["headers"]["djcelery_ops_replay_of"] for m in messages}) == 200
    assert Replay.objects.count() == 200


def test_replay_error__survives_pickling_as_celery_does_for_a_retry():
    import pickle

    error = pickle.loads(pickle.dumps(ReplayError("broker gone", published=3, unconfirmed=2)))
    assert (str(error), error.published, error.unconfirmed) == ("broker gone", 3, 2)
