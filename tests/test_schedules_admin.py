"""The periodic-task admin: code-managed status, next runs with DST warnings, run now."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from djcelery_ops.admin.schedules import OpsPeriodicTaskAdmin, SchedulerLeaseAdmin
from djcelery_ops.schedules.leader import try_acquire
from djcelery_ops.schedules.models import SchedulerLease
from djcelery_ops.schedules.timing import dst_clashes, next_run_times
from tests.testapp.models import Effect
from tests.utils import wait_until

TASK = "tests.testapp.tasks.record_effect"
CHANGELIST = "admin:django_celery_beat_periodictask_changelist"


def _berlin_nightly() -> PeriodicTask:
    cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    return PeriodicTask.objects.create(name="nightly", task=TASK, crontab=cron)


def test_admin__periodic_task_admin_is_the_extended_one():
    assert isinstance(admin.site._registry[PeriodicTask], OpsPeriodicTaskAdmin)
    assert isinstance(admin.site._registry[SchedulerLease], SchedulerLeaseAdmin)


@pytest.mark.django_db
def test_next_runs__crontab_runs_in_its_timezone_across_the_spring_gap():
    task = _berlin_nightly()
    runs = next_run_times(task, count=3, now=datetime(2026, 3, 27, 12, tzinfo=UTC))
    # 02:30 does not exist on 29 March in Berlin; celery's arithmetic lands on 03:30 CEST.
    assert [f"{run:%Y-%m-%d %H:%M %Z}" for run in runs] == [
        "2026-03-28 02:30 CET",
        "2026-03-29 03:30 CEST",
        "2026-03-30 02:30 CEST",
    ]


@pytest.mark.django_db
def test_next_runs__interval_counts_from_the_last_run():
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    last = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    task = PeriodicTask.objects.create(name="i", task=TASK, interval=interval, last_run_at=last)
    runs = next_run_times(task, count=2, now=datetime(2026, 1, 1, 12, 5, tzinfo=UTC))
    assert [f"{run:%H:%M}" for run in runs] == ["12:10", "12:20"]


@pytest.mark.django_db
def test_dst__crontab_in_the_gap_and_overlap_hours_is_warned_about():
    task = _berlin_nightly()
    clashes = [str(c) for c in dst_clashes(task.crontab, now=datetime(2026, 1, 1, tzinfo=UTC))]
    assert clashes == [
        "2026-03-29 02:30 does not exist in Europe/Berlin (clocks go forward):"
        " that run is moved or skipped",
        "2026-10-25 02:30 happens twice in Europe/Berlin (clocks go back): that run may repeat",
    ]


@pytest.mark.django_db
def test_dst__crontab_outside_the_changes_or_in_utc_has_no_warning():
    noon = CrontabSchedule.objects.create(minute="0", hour="12", timezone="Europe/Berlin")
    utc = CrontabSchedule.objects.create(minute="30", hour="2", timezone="UTC")
    assert dst_clashes(noon) == []
    assert dst_clashes(utc) == []


@pytest.mark.django_db
def test_admin__change_page_shows_next_runs_dst_warning_and_drift(admin_client, settings):
    settings.DJCELERY_OPS_SCHEDULES = [
        {"name": "nightly", "task": TASK, "crontab": "30 2 * * *", "timezone": "Europe/Berlin"}
    ]
    call_command("sync_celery_schedules", stdout=io.StringIO())
    task = PeriodicTask.objects.get(name="nightly")
    PeriodicTask.objects.filter(pk=task.pk).update(description="edited by hand")

    page = admin_client.get(
        reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    ).content.decode()
    assert "code, drift: description" in page
    assert "does not exist in Europe/Berlin (clocks go forward)" in page
    assert page.count("02:30:00 CE") + page.count("03:30:00 CEST") >= 4

    changelist = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "code, drift: description" in changelist


@pytest.mark.django_db
def test_admin__rows_made_in_the_admin_say_so(admin_client):
    _berlin_nightly()
    assert (
        '<td class="field-code_managed">admin</td>'
        in admin_client.get(reverse(CHANGELIST)).content.decode()
    )


@pytest.mark.django_db
def test_admin__run_now_needs_its_permission(client):
    _berlin_nightly()
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_periodictask", "change_periodictask"])
    )
    client.force_login(staff)
    assert "run_now" not in client.get(reverse(CHANGELIST)).content.decode()

    staff.user_permissions.add(Permission.objects.get(codename="run_periodictask_now"))
    staff = User.objects.get(pk=staff.pk)  # drop the permission cache
    client.force_login(staff)
    assert "run_now" in client.get(reverse(CHANGELIST)).content.decode()


@pytest.mark.worker
def test_admin__run_now_sends_the_task_with_its_kwargs_to_its_queue(
    start_worker, celery_queue, admin_client
):
    start_worker()
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)
    task = PeriodicTask.objects.create(
        name="daily", task=TASK, interval=interval, kwargs='{"key": "ran-now"}', queue=celery_queue
    )

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "run_now", "_selected_action": [task.pk]},
        follow=True,
    )

    assert "Sent 1 periodic task to run now." in response.content.decode()
    wait_until(lambda: Effect.objects.filter(key="ran-now").exists(), what="the run")


@pytest.mark.django_db
def test_admin__lease_page_shows_the_holder_read_only(admin_client):
    try_acquire("default", "host:42:abc", 30)
    page = admin_client.get(
        reverse("admin:djcelery_ops_schedulerlease_changelist")
    ).content.decode()
    assert "host:42:abc" in page
    assert 'alt="True"' in page
    assert reverse("admin:djcelery_ops_schedulerlease_add") not in page
    assert admin_client.get(reverse("admin:djcelery_ops_schedulerlease_add")).status_code == 403


def _lease_changelist_queries(client, rows: int, django_assert_num_queries) -> str:
    SchedulerLease.objects.all().delete()
    for index in range(rows):
        try_acquire(f"lease-{index:02}", f"host:{index}:abc", 30)
    # session, user, filtered and full count, the rows: the same for 1 row and for 20
    with django_assert_num_queries(5):
        response = client.get(reverse("admin:djcelery_ops_schedulerlease_changelist"))
    return response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("rows", [1, 20])
def test_admin__lease_changelist_is_a_constant_number_of_queries(
    admin_client, django_assert_num_queries, rows
):
    page = _lease_changelist_queries(admin_client, rows, django_assert_num_queries)
    assert page.count('alt="True"') == rows
