"""The commands' shared base: one parsing of hostile input, one wording, one exit-code table.

Exit codes are checked through ``manage.py`` in a subprocess, where argparse and Django's
``run_from_argv`` decide them; the rest through ``call_command`` with exact text.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from djcelery_ops.models import DeadLetter, IdempotencyKey, Replay, TaskRun
from tests.factories import dead_letter
from tests.worker import REPO_ROOT

COMMANDS = [
    "replay_dead_letters",
    "discard_dead_letters",
    "purge_dead_letters",
    "purge_task_runs",
    "purge_idempotency_keys",
    "sync_celery_schedules",
    "celery_ops_status",
    "ingest_dead_letter_spool",
]
TEN_THOUSAND_AND_ONE = [f"--id={n}" for n in range(1, 10_002)]
BAD_BATCH_SIZES = [
    ("-5", "--batch-size must be at least 1, not -5."),
    ("0", "--batch-size must be at least 1, not 0."),
    ("ten", "--batch-size: 'ten' is not a whole number."),
    ("1e3", "--batch-size: '1e3' is not a whole number."),
    ("99999999999999999999", "--batch-size must be at most 1000000, not 99999999999999999999."),
]
FILTERS = [
    (["--id=abc"], "--id: 'abc' is not a whole number."),
    (["--id=-3"], "--id must be at least 1, not -3."),
    (TEN_THOUSAND_AND_ONE, "--id: at most 10000 ids, got 10001; use filters."),
    (["--since=2999-01-01"], "--since: '2999-01-01' is in the future."),
    (["--since=99999999d"], "--since: '99999999d' is not a date (YYYY-MM-DD, ISO 8601"),
    (["--until=999999d"], "--until '999999d' is longer than 36500 days."),
    (["--limit=0"], "--limit must be at least 1, not 0."),
]
AGES = [
    ("99999999d", "--older-than '99999999d' is not a positive duration such as 90s"),
    ("999999d", "--older-than '999999d' is longer than 36500 days."),
    ("0d", "--older-than '0d' is not a positive duration"),
    ("-1d", "--older-than '-1d' is not a positive duration"),
]


def _bad_inputs() -> list[tuple[str, list[str], str]]:
    cases = [
        (name, ["--no-such-option", "--older-than=1d"], "Error: unrecognized arguments")
        for name in COMMANDS
    ]
    for name in ("replay_dead_letters", "discard_dead_letters"):
        cases += [(name, [*args, "--reason=x"], message) for args, message in FILTERS]
    for name in ("replay_dead_letters", "discard_dead_letters", "purge_dead_letters"):
        cases += [(name, [f"--batch-size={size}", "--reason=x", "--older-than=1d"], message)
                  for size, message in BAD_BATCH_SIZES]  # fmt: skip
    for name in ("purge_task_runs", "purge_idempotency_keys"):
        cases += [(name, [f"--batch-size={size}", "--older-than=1d"], message)
                  for size, message in BAD_BATCH_SIZES]  # fmt: skip
    for name in ("purge_dead_letters", "purge_task_runs", "purge_idempotency_keys"):
        cases += [(name, [f"--older-than={age}"], message) for age, message in AGES]
        cases.append((name, [], "Error: the following arguments are required: --older-than"))
    return cases


def _drop_options_the_command_lacks(name: str, args: list[str]) -> list[str]:
    has_reason = name in ("replay_dead_letters", "discard_dead_letters")
    has_age = name.startswith("purge_")
    return [
        arg
        for arg in args
        if not (arg.startswith("--reason") and not has_reason)
        and not (arg.startswith("--older-than=1d") and not has_age)
    ]


def row_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (DeadLetter, Replay, TaskRun, IdempotencyKey, PeriodicTask)
    }


@pytest.fixture
def one_of_each():
    """A row each command could change: an old dead letter, task run, key, schedule."""
    old = timezone.now() - datetime.timedelta(days=400)
    letter = dead_letter()
    DeadLetter.objects.filter(pk=letter.pk).update(status="resolved", updated_at=old)
    dead_letter()
    TaskRun.objects.create(task_id="old", state=TaskRun.State.SUCCEEDED, finished_at=old)
    IdempotencyKey.objects.create(
        key="old", task_name="t", mode=IdempotencyKey.Mode.ATOMIC,
        state=IdempotencyKey.State.DONE, created_at=old, completed_at=old,
    )  # fmt: skip
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(name="handmade", task="t", interval=interval)


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "args", "message"), _bad_inputs())
def test_bad_input__one_clear_line_exit_1_and_nothing_changed(one_of_each, name, args, message):
    before = row_counts()
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(name, *_drop_options_the_command_lacks(name, args), stdout=out)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert caught.value.returncode == 1
    assert out.getvalue() == ""
    assert row_counts() == before


# ``since()``: the same call on both managers (the commands' --since relies on it).
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("queryset", "field"),
    [(DeadLetter.objects, "last_failed_at"), (TaskRun.objects, "received_at")],
)
def test_since__takes_a_datetime_or_a_timedelta_on_both_managers(queryset, field):
    model = queryset.model
    now = timezone.now()
    if model is DeadLetter:
        for age in (1, 10):
            row = dead_letter()
            model.objects.filter(pk=row.pk).update(**{field: now - datetime.timedelta(days=age)})
    else:
        for age in (1, 10):
            model.objects.create(task_id=f"r{age}", **{field: now - datetime.timedelta(days=age)})
    assert queryset.since(datetime.timedelta(days=5)).count() == 1
    assert queryset.since(now - datetime.timedelta(days=5)).count() == 1
    assert queryset.since(datetime.timedelta(days=30)).count() == 2
    with pytest.raises(TypeError, match="since\\(\\) takes a datetime or a timedelta, not str"):
        queryset.since("5d")
    with pytest.raises(TypeError, match="not date"):
        queryset.since(now.date())


# Exit codes through manage.py, as an operator or a cron job sees them.
def manage(*args: str, settings_module: str = "tests.settings", **env: str):
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DJCELERY_OPS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # Ctrl-C as in a terminal: a suite started in the background by a non-interactive
        # shell ignores SIGINT, and a child would inherit that (Python then installs no
        # KeyboardInterrupt handler).
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_exit_1__an_unknown_option_is_one_line_not_argparse_exit_2():
    code, out, err = finish(manage("replay_dead_letters", "--no-such-option"))
    assert (code, out) == (1, "")
    assert err == (
        "CommandError: unrecognized arguments: --no-such-option "
        "(see manage.py replay_dead_letters --help)\n"
    )


def test_exit_1__a_bad_value_on_the_command_line():
    code, _out, err = finish(manage("purge_task_runs", "--older-than=14d", "--batch-size=abc"))
    assert code == 1
    assert err == "CommandError: --batch-size: 'abc' is not a whole number.\n"


@pytest.mark.django_db(transaction=True)
def test_exit_0__dry_run(celery_queue):
    dead_letter(options={"queue": celery_queue})
    code, out, _err = finish(manage("replay_dead_letters", "--dry-run"))
    assert (code, out) == (0, "Would replay 1 dead letter:\n  1  shop.tasks.charge\n")


@pytest.mark.django_db(transaction=True)
def test_exit_2__a_guard_stop(celery_queue):
    """No worker runs, so the canary's outcome never comes and the guard stops the run."""
    for _ in range(3):
        dead_letter(options={"queue": celery_queue})
    process = manage("replay_dead_letters", "--canary=1", "--canary-timeout=0.5", "--reason=canary")
    code, out, err = finish(process)
    assert code == 2, err
    assert err.startswith("CommandError: Stopped: 1 canary replays had no outcome after 0.5s.")
    assert DeadLetter.objects.filter(status="pending", replay_of__isnull=True).count() == 2


@pytest.mark.django_db(transaction=True)
def test_exit_3__broker_unreachable(celery_queue, tmp_path: Path):
    dead_letter(options={"queue": celery_queue})
    (tmp_path / "broker_down_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "DJCELERY_OPS_DEAD_LETTER_CELERY_APP = 'tests.test_replay_commands.down_app'\n"
    )
    process = manage(
        "replay_dead_letters", "--reason=x",
        settings_module="broker_down_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
    )  # fmt: skip
    code, _out, err = finish(process)
    assert code == 3, err
    assert "the broker failed after 0 of 1 replays" in err
    assert DeadLetter.objects.get().status == "replayed"  # claimed, waiting in the outbox


@pytest.mark.django_db(transaction=True)
def test_exit_4__interrupted_midway_prints_what_is_done_and_the_run_id(celery_queue):
    for _ in range(3):
        dead_letter(options={"queue": celery_queue})
    # One replay a second: the first batch is done well before the second starts.
    process = manage("replay_dead_letters", "--rate=1/s", "--reason=slowly")
    assert process.stdout is not None
    assert process.stdout.readline() == "Replayed 1/3 (skipped 0)\n"
    process.send_signal(signal.SIGINT)
    code, _out, err = finish(process)
    assert code == 4, err
    run_id = Replay.objects.get().run_id
    assert err.startswith(
        f"CommandError: Interrupted. Replayed 1 dead letter (run {run_id}).\n"
        "Run the same command again to replay the rest;"
    )
    assert DeadLetter.objects.filter(status="pending").count() == 2
