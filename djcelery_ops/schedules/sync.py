"""Plan and apply the sync of declared schedules into django-celery-beat's tables.

``plan_sync`` reads and decides, ``apply_sync`` writes the plan in one transaction. The
``sync_celery_schedules`` command and the admin are faces over these two functions.

A row's *values* are the fields sync manages (task, schedule, args, kwargs, queue,
expire_seconds, enabled, description). ``ManagedSchedule.synced_values`` keeps them as the
last sync wrote them, so a row whose values differ from those was edited in the admin.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from celery import current_app
from django.db import transaction
from django_celery_beat.models import (
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from djcelery_ops.schedules.declarations import (
    DeclarationError,
    Schedule,
    load_and_check_schedules,
)
from djcelery_ops.schedules.models import ManagedSchedule

Action = Literal[
    "create", "update", "unchanged", "drift", "overwrite", "adopt", "prune", "vanished"
]
WRITING_ACTIONS = frozenset({"create", "update", "overwrite", "adopt", "prune"})
SECONDS_PER_PERIOD = {
    IntervalSchedule.DAYS: 86400,
    IntervalSchedule.HOURS: 3600,
    IntervalSchedule.MINUTES: 60,
    IntervalSchedule.SECONDS: 1,
    IntervalSchedule.MICROSECONDS: 1e-6,
}


@dataclass(frozen=True)
class Change:
    """What sync does (or would do) to one schedule; ``fields`` names the differing values."""

    action: Action
    name: str
    fields: tuple[str, ...] = ()
    schedule: Schedule | None = None
    # (field, value in the row, value sync writes) of each field a write changes.
    values: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def writes(self) -> bool:
        return self.action in WRITING_ACTIONS


def known_task_names() -> set[str]:
    """Task names registered with the current Celery app, after task autodiscovery."""
    current_app.loader.import_default_modules()
    return set(current_app.tasks.keys())


def plan_from_settings(*, prune: bool, force: bool) -> list[Change]:
    """Load and validate ``DJCELERY_OPS_SCHEDULES`` and plan its sync.

    Raises ``DeclarationError`` with every problem at once: those of the declarations and
    the names taken by admin rows (planned from the valid declarations)."""
    schedules, errors = load_and_check_schedules(known_tasks=known_task_names())
    try:
        changes = plan_sync(schedules, prune=prune, force=force)
    except DeclarationError as exc:
        errors += exc.errors
    if errors:
        raise DeclarationError(errors)
    return changes


def plan_sync(schedules: list[Schedule], *, prune: bool, force: bool) -> list[Change]:
    """Decide per schedule; raise ``DeclarationError`` for rows sync may not take over."""
    names = [schedule.name for schedule in schedules]
    existing = {
        task.name: task
        for task in PeriodicTask.objects.filter(name__in=names).select_related(
            "crontab", "interval", "djcelery_ops_managed"
        )
    }
    changes = [_plan_one(s, existing.get(s.name), force=force) for s in schedules]
    errors = [
        f"schedule {change.name!r}: a periodic task of that name exists and was not created by "
        "sync_celery_schedules; rename the declaration, delete the row, or use --force to adopt it"
        for change in changes
        if change.action == "adopt" and not force
    ]
    if errors:
        raise DeclarationError(errors)
    return changes + _plan_vanished(names, prune=prune)


def _plan_one(schedule: Schedule, task: PeriodicTask | None, *, force: bool) -> Change:
    if task is None:
        return Change("create", schedule.name, schedule=schedule)
    current, desired = row_values(task), declared_values(schedule)
    managed = getattr(task, "djcelery_ops_managed", None)
    fields = differing(current, desired)
    values = tuple((name, current.get(name), desired[name]) for name in fields)
    if managed is None:
        return Change("adopt", schedule.name, fields, schedule, values)
    if current == desired:
        return Change("unchanged", schedule.name, schedule=schedule)
    if current == managed.synced_values:
        return Change("update", schedule.name, fields, schedule, values)
    if force:
        return Change("overwrite", schedule.name, fields, schedule, values)
    return Change("drift", schedule.name, differing(managed.synced_values, current), schedule)


def _plan_vanished(declared: list[str], *, prune: bool) -> list[Change]:
    gone = (
        PeriodicTask.objects.filter(djcelery_ops_managed__isnull=False, enabled=True)
        .exclude(name__in=declared)
        .order_by("name")
        .values_list("name", flat=True)
    )
    return [Change("prune" if prune else "vanished", name) for name in gone]


def differing(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, ...]:
    return tuple(key for key in new if old.get(key) != new[key])


def drifted_fields(task: PeriodicTask) -> tuple[str, ...] | None:
    """Fields edited since the last sync; ``None`` when the row is not code-managed."""
    managed = getattr(task, "djcelery_ops_managed", None)
    if managed is None:
        return None
    return differing(managed.synced_values, row_values(task))


def apply_sync(changes: list[Change]) -> None:
    """Write every change of the plan in one transaction and tell beat once."""
    with transaction.atomic():
        for change in changes:
            if change.action == "prune":
                _prune(change.name)
            elif change.writes:
                assert change.schedule is not None
                _write(change.schedule)
            elif change.action == "unchanged":
                _refresh_synced_values(change.name)
        if any(change.writes for change in changes):
            PeriodicTasks.update_changed()


def count_actions(changes: list[Change]) -> Counter[str]:
    return Counter(change.action for change in changes)


def _write(schedule: Schedule) -> None:
    task = PeriodicTask.objects.filter(name=schedule.name).first() or PeriodicTask(
        name=schedule.name
    )
    task.task = schedule.task
    task.crontab, task.interval = _schedule_rows(schedule)
    task.args = json.dumps(list(schedule.args))
    task.kwargs = json.dumps(dict(schedule.kwargs))
    task.queue = schedule.queue
    task.expires = None  # sync owns expiry, as expire_seconds; the two may not both be set
    task.expire_seconds = schedule.expire_seconds()
    task.enabled = schedule.enabled
    task.description = schedule.description
    task.save()
    ManagedSchedule.objects.update_or_create(
        periodic_task=task, defaults={"synced_values": row_values(task)}
    )


def _prune(name: str) -> None:
    task = PeriodicTask.objects.get(name=name)
    task.enabled = False
    task.save()
    ManagedSchedule.objects.filter(periodic_task=task).update(synced_values=row_values(task))


def _refresh_synced_values(name: str) -> None:
    # An admin edit that matches the new declaration is no longer drift.
    task = PeriodicTask.objects.select_related("crontab", "interval").get(name=name)
    ManagedSchedule.objects.filter(periodic_task=task).update(synced_values=row_values(task))


def _schedule_rows(
    schedule: Schedule,
) -> tuple[CrontabSchedule | None, IntervalSchedule | None]:
    if schedule.crontab is not None:
        minute, hour, day_of_month, month_of_year, day_of_week = schedule.crontab_fields()
        fields = {
            "minute": minute,
            "hour": hour,
            "day_of_month": day_of_month,
            "month_of_year": month_of_year,
            "day_of_week": day_of_week,
            "timezone": schedule.timezone_name(),
        }
        row = CrontabSchedule.objects.filter(**fields).order_by("pk").first()
        return row or CrontabSchedule.objects.create(**fields), None
    every, period = _interval_in_largest_unit(schedule.interval_seconds())
    row_i = IntervalSchedule.objects.filter(every=every, period=period).order_by("pk").first()
    return None, row_i or IntervalSchedule.objects.create(every=every, period=period)


def _interval_in_largest_unit(seconds: int) -> tuple[int, str]:
    for period in (IntervalSchedule.DAYS, IntervalSchedule.HOURS, IntervalSchedule.MINUTES):
        size = int(SECONDS_PER_PERIOD[period])
        if seconds % size == 0:
            return seconds // size, period
    return seconds, IntervalSchedule.SECONDS


def row_values(task: PeriodicTask) -> dict[str, Any]:
    """The managed values of a periodic task row, comparable with ``declared_values``."""
    return {
        "task": task.task,
        "schedule": _schedule_text(task),
        "args": json.loads(task.args or "[]"),
        "kwargs": json.loads(task.kwargs or "{}"),
        "queue": task.queue or None,
        "expire_seconds": task.expire_seconds,
        "enabled": task.enabled,
        "description": task.description,
    }


def declared_values(schedule: Schedule) -> dict[str, Any]:
    if schedule.crontab is not None:
        schedule_text = f"crontab {' '.join(schedule.crontab_fields())} {schedule.timezone_name()}"
    else:
        schedule_text = f"every {schedule.interval_seconds()}s"
    return {
        "task": schedule.task,
        "schedule": schedule_text,
        "args": json.loads(json.dumps(list(schedule.args))),
        "kwargs": json.loads(json.dumps(dict(schedule.kwargs))),
        "queue": schedule.queue or None,
        "expire_seconds": schedule.expire_seconds(),
        "enabled": schedule.enabled,
        "description": schedule.description,
    }


def _schedule_text(task: PeriodicTask) -> str:
    if task.crontab is not None:
        c = task.crontab
        fields = (c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week)
        return f"crontab {' '.join(fields)} {c.timezone}"
    if task.interval is not None:
        seconds = task.interval.every * SECONDS_PER_PERIOD[task.interval.period]
        return f"every {int(seconds)}s" if float(seconds).is_integer() else f"every {seconds}s"
    return "other"
