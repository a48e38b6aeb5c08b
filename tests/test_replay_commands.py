"""replay_dead_letters, discard_dead_letters, purge_dead_letters: output, input, guards."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from djcelery_ops.models import DeadLetter, Discard, Replay
from tests.factories import dead_letter
from tests.proxy import TcpProxy
from tests.replay_helpers import drain
from tests.worker import REPO_ROOT

# Commits for real, as in production: the publish runs on commit, inside the command.
pytestmark = pytest.mark.django_db(transaction=True)


def run(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def publishing(django_capture_on_commit_callbacks):
    return lambda: django_capture_on_commit_callbacks(execute=True)


def letters(queue: str, count: int, **fields) -> list[DeadLetter]:
    return [dead_letter(options={"queue": queue}, **fields) for _ in range(count)]


def test_replay_dry_run__prints_what_would_be_replayed_grouped_and_changes_nothing(
    celery_queue, publishing, settings
):
    letters(celery_queue, 2, task_name="shop.charge")
    letters(celery_queue, 10, task_name="mail.send")
    settings.DJCELERY_OPS_DEAD_LETTER_MAX_PAYLOAD_BYTES = 50
    dead_letter(task_name="mail.send", args=["x" * 100])
    with publishing():
        output = run("replay_dead_letters", "--dry-run")
    assert output == (
        "Would replay 12 dead letters:\n"
        "  10  mail.send\n"
        "   2  shop.charge\n"
        "Skipped 1: payload truncated 1\n"
    )
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"pending"}
    assert drain(celery_queue) == []


def test_replay__filters_batches_progress_and_summary(celery_queue, publishing):
    wanted = letters(celery_queue, 5, task_name="shop.charge")
    letters(celery_queue, 2, task_name="mail.send")
    with publishing():
        output = run(
            "replay_dead_letters",
            "--task=shop.charge",
            "--batch-size=2",
            "--reason=gateway fixed",
            "--by=alice",
        )
    run_id = Replay.objects.first().run_id
    assert output == (
        "Replayed 2/5 (skipped 0)\n"
        "Replayed 4/5 (skipped 0)\n"
        "Replayed 5/5 (skipped 0)\n"
        f"Replayed 5 dead letters (run {run_id}).\n"
    )
    assert len(drain(celery_queue)) == 5
    assert set(Replay.objects.values_list("dead_letter_id", "by", "reason")) == {
        (letter.pk, "alice", "gateway fixed") for letter in wanted
    }


def test_replay__second_run_continues_and_replays_nothing_twice(celery_queue, publishing):
    letters(celery_queue, 5)
    with publishing():
        run("replay_dead_letters", "--limit=3", "--reason=first half")
    with publishing():
        output = run("replay_dead_letters", "--reason=the rest")
    assert output.startswith("Replayed 2/2 (skipped 0)\nReplayed 2 dead letters")
    assert len(drain(celery_queue)) == 5
    with publishing():
        assert (
            run("replay_dead_letters", "--reason=again")
            == "Nothing to replay: no pending dead letters match.\n"
        )


def test_replay_by_id__says_why_rows_were_skipped(celery_queue, publishing):
    first, second = letters(celery_queue, 2)
    DeadLetter.objects.filter(pk=second.pk).update(status="discarded")
    with publishing():
        output = run("replay_dead_letters", f"--id={first.pk}", f"--id={second.pk}", "--reason=x")
    assert output.splitlines()[-1] == "Skipped 1: already discarded 1"
    assert output.splitlines()[-2].startswith("Replayed 1 dead letter (run ")


def test_replay__ten_thousand_ids_are_accepted(celery_queue, publishing):
    [letter] = letters(celery_queue, 1)
    ids = [f"--id={n}" for n in range(letter.pk, letter.pk + 10_000)]
    with publishing():
        output = run("replay_dead_letters", *ids, "--reason=x")
    assert output.splitlines()[-1].startswith("Replayed 1 dead letter")
    assert len(drain(celery_queue)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--reason is required (it is stored with what is done)."),
        (["--reason= "], "--reason is required (it is stored with what is done)."),
        (["--since=yesterday", "--reason=x"], "--since: 'yesterday' is not a date"),
        (["--until=2024-13-45", "--reason=x"], "--until: '2024-13-45' is not a date"),
        (["--rate=0", "--reason=x"], "--rate: '0' is not a positive rate like 50/s or 600/m."),
        (["--rate=fast", "--reason=x"], "--rate: 'fast' is not a positive rate"),
        (["--limit=-5", "--reason=x"], "--limit must be at least 1, not -5."),
        (["--batch-size=0", "--reason=x"], "--batch-size must be at least 1, not 0."),
        (["--canary=two", "--reason=x"], "--canary: 'two' is not a whole number."),
        (["--canary-timeout=-1", "--reason=x"], "--canary-timeout: '-1' is not seconds"),
        (["--max-failure-rate=1.5", "--reason=x"], "--max-failure-rate: '1.5' is not a"),
        (["--id=1; DROP TABLE x", "--reason=x"], "--id: '1; DROP TABLE x' is not a whole"),
        (["--failure-reason=oops", "--reason=x"], "unknown failure reason 'oops'"),
        (["--since=2d", "--until=3d", "--reason=x"], "since is after until"),
    ],
)
def test_replay__bad_input_is_a_clear_error_and_changes_nothing(args, message):
    dead_letter()
    with pytest.raises(CommandError) as caught:
        run("replay_dead_letters", *args)
    assert str(caught.value).startswith(message)
    assert caught.value.returncode == 1
    assert DeadLetter.objects.get().status == "pending"
    assert not Replay.objects.exists()


def test_replay__sql_like_filter_values_match_nothing(publishing):
    dead_letter()
    with publishing():
        output = run("replay_dead_letters", "--task=x' OR '1'='1", "--reason=x")
    assert output == "Nothing to replay: no pending dead letters match.\n"


def test_replay__too_many_ids_is_refused():
    with pytest.raises(CommandError, match="--id: at most 10000 ids, got 10001; use filters."):
        run("replay_dead_letters", *(["--id=1"] * 10_001), "--reason=x")


@pytest.mark.django_db(transaction=True)  # publish runs on commit, inside the command
def test_replay__broker_down_exits_3_and_the_claim_waits_in_the_outbox(settings, celery_queue):
    dead_letter(options={"queue": celery_queue})
    settings.DJCELERY_OPS_DEAD_LETTER_CELERY_APP = "tests.test_replay_commands.down_app"
    with pytest.raises(CommandError) as caught:
        run("replay_dead_letters", "--reason=x")
    assert caught.value.returncode == 3
    message = str(caught.value)
    assert "the broker failed after 0 of 1 replays" in message
    assert "Replayed 0 dead letters" in message
    assert "1 more claimed, not confirmed by the broker" in message
    assert DeadLetter.objects.get().status == "replayed"
    task_id = Replay.objects.get(published_at__isnull=True).new_task_id
    # The broker is back: --recover publishes it, with the same task id.
    settings.DJCELERY_OPS_DEAD_LETTER_CELERY_APP = None
    assert run("replay_dead_letters", "--recover") == (
        "Recovered 1 interrupted replay (same task ids).\n"
    )
    assert [m["headers"]["id"] for m in drain(celery_queue)] == [task_id]
    assert run("replay_dead_letters", "--recover") == (
        "Nothing to recover: no interrupted replays (same task ids).\n"
    )


def _down_app():
    from celery import Celery

    app = Celery("down", set_as_current=False)
    app.conf.broker_write_url = "redis://127.0.0.1:1/0"
    app.conf.broker_connection_timeout = 0.5
    app.conf.task_publish_retry_policy = {"max_retries": 0}
    return app


down_app = _down_app()


def test_discard__filters_and_records_reason(publishing):
    dead_letter(task_name="a", queue="q1")
    dead_letter(task_name="a", queue="q2")
    assert run("discard_dead_letters", "--queue=q1", "--dry-run") == (
        "Would discard 1 dead letter:\n  1  a\n"
    )
    output = run("discard_dead_letters", "--queue=q1", "--reason=obsolete", "--by=bob")
    assert output == "Discarded 1 dead letter.\n"
    assert list(Discard.objects.values_list("by", "reason")) == [("bob", "obsolete")]
    assert DeadLetter.objects.filter(status="pending").count() == 1
    with pytest.raises(CommandError, match="--reason is required"):
        run("discard_dead_letters", "--queue=q2")


def test_purge__dry_run_then_batches_and_bad_status():
    old = timezone.now() - datetime.timedelta(days=40)
    for status in ("resolved", "discarded", "pending", "resolved"):
        row = dead_letter()
        DeadLetter.objects.filter(pk=row.pk).update(status=status, updated_at=old)
    dead_letter()
    assert run("purge_dead_letters", "--older-than=30d", "--dry-run") == (
        "Would purge 3 dead letters (discarded, resolved) unchanged for 30d.\n"
    )
    assert run("purge_dead_letters", "--older-than=30d", "--batch-size=2") == (
        "Purged 2/3 dead letters so far.\n"
        "Purged 3/3 dead letters so far.\n"
        "Purged 3 dead letters (discarded, resolved) unchanged for 30d.\n"
    )
    assert sorted(DeadLetter.objects.values_list("status", flat=True)) == ["pending", "pending"]
    for args, message in [
        (["--older-than=30d", "--status=pending"], "--status: pending cannot be purged"),
        (["--older-than=30d", "--status=bogus,resolved"], "--status: bogus cannot be purged"),
        (["--older-than=30d", "--status=,"], "--status: (empty) cannot be purged"),
        (["--older-than=month"], "--older-than 'month' is not a positive duration"),
        (["--older-than=30d", "--batch-size=-1"], "--batch-size must be at least 1"),
    ]:
        with pytest.raises(CommandError) as caught:
            run("purge_dead_letters", *args)
        assert str(caught.value).startswith(message), args
    assert DeadLetter.objects.count() == 2


@pytest.mark.parametrize("command", ["replay_dead_letters", "discard_dead_letters"])
def test_dry_run_with_limit__counts_the_first_rows_only(command):
    letters("q", 3, task_name="a")
    letters("q", 2, task_name="b")
    verb = command.split("_")[0]
    assert (
        run(command, "--dry-run", "--limit=4") == f"Would {verb} 4 dead letters:\n  3  a\n  1  b\n"
    )
    assert DeadLetter.objects.filter(status="pending").count() == 5


@pytest.mark.parametrize("dry_run", [True, False])
def test_replay__missing_ids_are_named_one_per_line(publishing, dry_run):
    [letter] = letters("q", 1)
    args = [f"--id={letter.pk}", "--id=999999", "--id=888888", "--reason=x"]
    with publishing():
        output = run("replay_dead_letters", *args, *(["--dry-run"] if dry_run else []))
    lines = output.splitlines()
    assert lines[:2] == ["not found: 888888", "not found: 999999"]
    assert lines[2].startswith("Would replay 1 dead letter:" if dry_run else "Replayed 1/1")


@pytest.mark.parametrize("dry_run", [True, False])
def test_discard__only_missing_ids_is_nothing_to_do_in_the_same_words(dry_run):
    dead_letter()
    args = ["--id=22", "--reason=x", *(["--dry-run"] if dry_run else [])]
    assert run("discard_dead_letters", *args) == (
        "not found: 22\nNothing to discard: no pending dead letters match.\n"
    )
    assert not Discard.objects.exists()


@pytest.mark.parametrize("command", ["replay_dead_letters", "discard_dead_letters"])
def test_nothing_to_do__reads_the_same_in_the_dry_run_and_the_real_run(command, publishing):
    verb = command.split("_")[0]
    with publishing():
        dry = run(command, "--task=nope", "--dry-run")
        real = run(command, "--task=nope", "--reason=x")
    assert dry == real == f"Nothing to {verb}: no pending dead letters match.\n"


@pytest.mark.parametrize("name", ["KeyError", "builtins.KeyError"])
def test_exception_filter__takes_the_short_and_the_dotted_name(name):
    dead_letter(exception_class="builtins.KeyError", task_name="k")
    dead_letter(exception_class="builtins.ValueError", task_name="v")
    dead_letter(exception_class="shop.errors.NotAKeyError", task_name="n")
    assert run("discard_dead_letters", f"--exception={name}", "--dry-run") == (
        "Would discard 1 dead letter:\n  1  k\n"
    )


# --- The database lost mid-run (a real subprocess; its database goes through a proxy) ------


def _command_through(proxy, queue: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _url_through(settings.DATABASES["default"], proxy.port),
        "DJCELERY_OPS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "DJCELERY_OPS_TEST_QUEUE": queue,
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "replay_dead_letters", "--reason=db cut", "--by=ops",
         *args],
        cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _url_through(database: dict, port: int) -> str:
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    return f"postgres://{user}{password}@127.0.0.1:{port}/{database['NAME']}"


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3",
    reason="SQLite has no connection to cut",
)
def test_replay_command__database_cut_mid_run__exits_5_with_what_was_done_and_the_run_id(
    celery_queue,
):
    rows = letters(celery_queue, 200)
    database = settings.DATABASES["default"]
    proxy = TcpProxy(database.get("HOST") or "127.0.0.1", int(database.get("PORT") or 5432))
    proxy.start()
    # 20 per batch at 40/s: half a second between batches, so the cut lands mid-run.
    process = _command_through(proxy, celery_queue, "--batch-size=20", "--rate=40/s")
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("Replayed 20/200"), first + process.communicate()[1]
    proxy.stop()
    out, err = process.communicate(timeout=120)

    assert process.returncode == 5, out + err
    assert "Traceback" not in err
    assert "Stopped: the database is unreachable (" in err
    replayed = DeadLetter.objects.filter(status=DeadLetter.Status.REPLAYED).count()
    assert 20 <= replayed < 200
    run_id = Replay.objects.values_list("run_id", flat=True).distinct().get()
    assert f"Replayed {replayed} dead letters (run {run_id})." in err
    assert f"--run-id {run_id}" in err

    # Back again: the same command with that run id finishes the run.
    out = run("replay_dead_letters", "--reason=db back", f"--run-id={run_id}")
    assert f"Replayed {200 - replayed} dead letters (run {run_id})." in out
    assert not DeadLetter.objects.filter(pk__in=[r.pk for r in rows], status="pending").exists()
    assert set(Replay.objects.values_list("run_id", flat=True)) == {run_id}
    assert len(drain(celery_queue)) == 200


def test_replay_command__bad_run_id__is_bad_input():
    with pytest.raises(CommandError, match="--run-id: 'x y' is not a run id") as raised:
        run("replay_dead_letters", "--reason=r", "--run-id=x y")
    assert raised.value.returncode == 1
