"""``sync_celery_schedules``: schedules declared in settings upserted into django-celery-beat."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import (
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from djcelery_ops.schedules.declarations import Schedule
from djcelery_ops.schedules.models import ManagedSchedule
from djcelery_ops.schedules.sync import drifted_fields

pytestmark = pytest.mark.django_db

TASK = "tests.testapp.tasks.record_effect"
NIGHTLY = {
    "name": "nightly",
    "task": TASK,
    "crontab": "30 2 * * *",
    "kwargs": {"key": "nightly"},
    "timezone": "Europe/Berlin",
}
EVERY_MINUTE = {"name": "heartbeat", "task": TASK, "interval": 60, "args": ["beat"]}

# Declarations loaded through a dotted path (module attribute), see test below.
DECLARED = [Schedule(name="from-module", task=TASK, interval=timedelta(hours=2))]


def sync(*args: str) -> str:
    out = io.StringIO()
    call_command("sync_celery_schedules", *args, stdout=out)
    return out.getvalue()


def test_sync__creates_rows_marked_code_managed_with_utc_and_expires_defaults(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY, EVERY_MINUTE]
    before = PeriodicTasks.last_change()

    assert sync() == "Created nightly\nCreated heartbeat\nSynced 2 schedules: 2 create.\n"

    nightly = PeriodicTask.objects.get(name="nightly")
    assert (nightly.task, nightly.kwargs, nightly.enabled) == (TASK, '{"key": "nightly"}', True)
    assert str(nightly.crontab.timezone) == "Europe/Berlin"
    assert (nightly.crontab.minute, nightly.crontab.hour) == ("30", "2")
    assert nightly.expire_seconds == 3600
    heartbeat = PeriodicTask.objects.get(name="heartbeat")
    assert (heartbeat.interval.every, heartbeat.interval.period) == (1, IntervalSchedule.MINUTES)
    assert heartbeat.expire_seconds == 60  # the default, capped at the interval
    assert ManagedSchedule.objects.count() == 2
    assert PeriodicTasks.last_change() != before


def test_sync__crontab_without_timezone_is_utc(settings):
    settings.DJCELERY_OPS_SCHEDULES = [{**NIGHTLY, "timezone": None}]
    sync()
    assert str(PeriodicTask.objects.get(name="nightly").crontab.timezone) == "UTC"


def test_sync__second_run_is_unchanged_and_writes_nothing(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY, EVERY_MINUTE]
    sync()
    last_change = PeriodicTasks.last_change()

    assert sync() == "Unchanged nightly\nUnchanged heartbeat\nNothing to sync: 2 unchanged.\n"
    assert PeriodicTasks.last_change() == last_change


def test_sync__changed_declaration_updates_the_row_and_names_the_fields(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY]
    sync()
    settings.DJCELERY_OPS_SCHEDULES = [{**NIGHTLY, "crontab": "0 3 * * *", "queue": "reports"}]

    assert sync() == "Updated nightly: schedule, queue\nSynced 1 schedule: 1 update.\n"
    nightly = PeriodicTask.objects.get(name="nightly")
    assert (nightly.crontab.hour, nightly.crontab.minute, nightly.queue) == ("3", "0", "reports")
    assert drifted_fields(nightly) == ()


def test_sync__admin_edit_is_kept_and_reported_as_drift(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY]
    sync()
    edited = PeriodicTask.objects.get(name="nightly")
    edited.kwargs = '{"key": "edited"}'
    edited.save()
    settings.DJCELERY_OPS_SCHEDULES = [{**NIGHTLY, "description": "new text"}]

    assert sync() == (
        "Drift nightly: kwargs edited in the admin; kept (use --force to overwrite)\n"
        "Nothing to sync: 1 drift.\n"
    )
    kept = PeriodicTask.objects.get(name="nightly")
    assert (kept.kwargs, kept.description) == ('{"key": "edited"}', "")
    assert drifted_fields(kept) == ("kwargs",)


def test_sync__force_overwrites_the_admin_edit(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY]
    sync()
    PeriodicTask.objects.filter(name="nightly").update(kwargs='{"key": "edited"}')

    assert sync("--force") == (
        "Overwrote nightly, discarding the admin edit of: kwargs\nSynced 1 schedule: 1 overwrite.\n"
    )
    restored = PeriodicTask.objects.get(name="nightly")
    assert restored.kwargs == '{"key": "nightly"}'
    assert drifted_fields(restored) == ()


def test_sync__admin_edit_matching_the_declaration_is_no_longer_drift(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY]
    sync()
    PeriodicTask.objects.filter(name="nightly").update(description="agreed")
    settings.DJCELERY_OPS_SCHEDULES = [{**NIGHTLY, "description": "agreed"}]

    assert sync() == "Unchanged nightly\nNothing to sync: 1 unchanged.\n"
    assert drifted_fields(PeriodicTask.objects.get(name="nightly")) == ()


def test_sync__vanished_entry_is_reported_and_disabled_only_with_prune(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY, EVERY_MINUTE]
    sync()
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY]

    assert sync() == (
        "Unchanged nightly\n"
        "Not declared heartbeat: still enabled (use --prune to disable)\n"
        "Nothing to sync: 1 unchanged, 1 vanished.\n"
    )
    assert PeriodicTask.objects.get(name="heartbeat").enabled
    assert sync("--prune") == (
        "Unchanged nightly\nPruned heartbeat (disabled)\nSynced 1 schedule: 1 prune, 1 unchanged.\n"
    )
    assert not PeriodicTask.objects.get(name="heartbeat").enabled
    assert sync("--prune") == "Unchanged nightly\nNothing to sync: 1 unchanged.\n"


def test_sync__prune_leaves_rows_created_in_the_admin_alone(settings):
    interval = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(name="handmade", task=TASK, interval=interval)
    settings.DJCELERY_OPS_SCHEDULES = []

    assert sync("--prune") == "Nothing to sync: no schedules declared.\n"
    assert PeriodicTask.objects.get(name="handmade").enabled


def test_sync__dry_run_prints_the_plan_and_writes_nothing(settings):
    settings.DJCELERY_OPS_SCHEDULES = [NIGHTLY, EVERY_MINUTE]
    sync()
    PeriodicTask.objects.filter(name="nightly").update(description="admin text")
    settings.DJCELERY_OPS_SCHEDULES = [
        {**NIGHTLY, "kwargs": {"key": "v2"}},
        {**EVERY_MINUTE, "name": "new-one"},
    ]
    snapshot = list(PeriodicTask.objects.order_by("name").values())

    assert sync("--dry-run", "--prune") == (
        "Drift nightly: description edited in the admin; kept (use --force to overwrite)\n"
        "Would create new-one\n"
        "Would prune heartbeat (disable)\n"
        "Would sync 2 schedules: 1 create, 1 prune, 1 drift.\n"
    )
    assert sync("--dry-run", "--force") == (
        "Would overwrite nightly, discarding the admin edit of: kwargs, description\n"
        '  kwargs: {"key": "nightly"} -> {"key": "v2"}\n'
        '  description: "admin text" -> ""\n'
        "Would create new-one\n"
        "Not declared heartbeat: still enabled (use --prune to disable)\n"
        "Would sync 2 schedules: 1 create, 1 overwrite, 1 vanished.\n"
    )
    assert list(PeriodicTask.objects.order_by("name").values()) == snapshot


def test_sync__bad_input_is_a_command_error_and_nothing_is_written(settings):
    settings.DJCELERY_OPS_SCHEDULES = [
        EVERY_MINUTE,
        {**NIGHTLY, "task": "tests.testapp.tasks.no_such_task"},
        {"name": "bad-cron", "task": TASK, "crontab": "61 * * * *"},
        {"name": "short-cron", "task": TASK, "crontab": "* * *"},
        {"name": "both", "task": TASK, "crontab": "* * * * *", "interval": 5},
        {"name": "typo", "task": TASK, "interval": 5, "kwrags": {}},
        {"name": "zone", "task": TASK, "crontab": "0 0 * * *", "timezone": "Mars/Olympus"},
    ]

    with pytest.raises(CommandError) as raised:
        sync()

    assert str(raised.value) == (
        "Invalid schedules, nothing written:\n"
        "schedule 'nightly': unknown task 'tests.testapp.tasks.no_such_task'"
        " (not registered with the Celery app)\n"
        "schedule 'bad-cron': invalid crontab '61 * * * *': Invalid end range: 61 > 59.\n"
        "schedule 'short-cron': invalid crontab '* * *':"
        " expected 5 fields (minute hour day month weekday)\n"
        "schedule 'both': give exactly one of crontab and interval\n"
        "schedule 'typo': unknown field(s) kwrags\n"
        "schedule 'zone': unknown timezone 'Mars/Olympus'"
    )
    assert not PeriodicTask.objects.filter(name="heartbeat").exists()
    assert (CrontabSchedule.objects.count(), IntervalSchedule.objects.count()) == (0, 0)


def test_sync__name_taken_by_an_admin_row_is_refused_unless_forced(settings):
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(name="heartbeat", task=TASK, interval=interval, args='["x"]')
    settings.DJCELERY_OPS_SCHEDULES = [EVERY_MINUTE, NIGHTLY]

    with pytest.raises(CommandError, match="was not created by sync_celery_schedules"):
        sync()
    assert not PeriodicTask.objects.filter(name="nightly").exists()

    assert sync("--force") == (
        "Adopted heartbeat from the admin: args, expire_seconds\n"
        "Created nightly\n"
        "Synced 2 schedules: 1 create, 1 adopt.\n"
    )
    assert drifted_fields(PeriodicTask.objects.get(name="heartbeat")) == ()


def test_sync__declarations_from_a_dotted_path(settings):
    settings.DJCELERY_OPS_SCHEDULES = "tests.test_schedules_sync.DECLARED"

    assert sync() == "Created from-module\nSynced 1 schedule: 1 create.\n"
    interval = PeriodicTask.objects.get(name="from-module").interval
    assert (interval.every, interval.period) == (2, IntervalSchedule.HOURS)


def test_sync__unimportable_dotted_path_is_a_command_error(settings):
    settings.DJCELERY_OPS_SCHEDULES = "tests.nowhere.SCHEDULES"

    with pytest.raises(CommandError, match="cannot import 'tests.nowhere.SCHEDULES'"):
        sync()


def test_checks__declared_schedules_without_the_locked_scheduler_warn(settings):
    from djcelery_ops.checks import check_beat_scheduler

    settings.DJCELERY_OPS_SCHEDULES = [EVERY_MINUTE]
    settings.CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
    assert [w.id for w in check_beat_scheduler()] == ["djcelery_ops.W101"]

    settings.CELERY_BEAT_SCHEDULER = "djcelery_ops.schedules.scheduler:LockedDatabaseScheduler"
    assert check_beat_scheduler() == []
    settings.DJCELERY_OPS_SCHEDULES = None
    settings.CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
    assert check_beat_scheduler() == []


def test_checks__a_lease_of_a_second_warns(settings):
    from djcelery_ops.checks import check_lease_seconds

    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 1
    assert [w.id for w in check_lease_seconds()] == ["djcelery_ops.W102"]
    settings.DJCELERY_OPS_BEAT_LEASE_SECONDS = 10
    assert check_lease_seconds() == []


def test_checks__invalid_declarations_are_errors_one_per_problem(settings):
    from djcelery_ops.checks import check_schedule_declarations

    settings.DJCELERY_OPS_SCHEDULES = [
        {"name": "a", "task": TASK, "crontab": "* *"},
        {"name": "b", "task": TASK},
    ]
    errors = check_schedule_declarations()
    assert [e.id for e in errors] == ["djcelery_ops.E101", "djcelery_ops.E101"]
    assert [e.msg for e in errors] == [
        "schedule 'a': invalid crontab '* *': expected 5 fields (minute hour day month weekday)",
        "schedule 'b': give exactly one of crontab and interval",
    ]
    settings.DJCELERY_OPS_SCHEDULES = [EVERY_MINUTE]
    assert check_schedule_declarations() == []
