"""Schedules declared in code: the ``Schedule`` dataclass and loading from settings.

``DJCELERY_OPS_SCHEDULES`` is a list of dicts (or ``Schedule`` objects) or the dotted path of a
module attribute holding such a list. Loading validates everything and reports every problem
at once, so ``sync_celery_schedules`` writes nothing when one declaration is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from celery.schedules import crontab
from django.utils.module_loading import import_string

from djcelery_ops.conf import ops_settings

DEFAULT: Literal["default"] = "default"


class DeclarationError(ValueError):
    """One or more declarations are invalid; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Schedule:
    """One periodic job as the project declares it.

    Exactly one of ``crontab`` ("minute hour day-of-month month day-of-week", evaluated in
    ``timezone``) and ``interval`` (seconds or a timedelta) is given. ``expires`` is in seconds
    after the dispatch; left at "default" it is ``DJCELERY_OPS_SCHEDULE_DEFAULT_EXPIRES_SECONDS``
    (at most the interval), ``None`` means never.
    """

    name: str
    task: str
    crontab: str | None = None
    interval: float | timedelta | None = None
    args: list[Any] | tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    expires: int | None | Literal["default"] = DEFAULT
    timezone: str | None = None
    enabled: bool = True
    description: str = ""

    def interval_seconds(self) -> int:
        assert self.interval is not None
        if isinstance(self.interval, timedelta):
            return int(self.interval.total_seconds())
        return int(self.interval)

    def crontab_fields(self) -> list[str]:
        assert self.crontab is not None
        return self.crontab.split()

    def timezone_name(self) -> str:
        return self.timezone or ops_settings.SCHEDULE_DEFAULT_TIMEZONE

    def expire_seconds(self) -> int | None:
        if self.expires != DEFAULT:
            return self.expires
        default: int = ops_settings.SCHEDULE_DEFAULT_EXPIRES_SECONDS
        return min(default, self.interval_seconds()) if self.interval is not None else default


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Schedule))


def load_schedules(known_tasks: Iterable[str] | None = None) -> list[Schedule]:
    """The declarations of ``DJCELERY_OPS_SCHEDULES``, validated; raise ``DeclarationError``."""
    schedules, errors = load_and_check_schedules(known_tasks)
    if errors:
        raise DeclarationError(errors)
    return schedules


def load_and_check_schedules(
    known_tasks: Iterable[str] | None = None,
) -> tuple[list[Schedule], list[str]]:
    """The valid declarations and every problem of the others."""
    raw = ops_settings.SCHEDULES
    if raw is None:
        return [], []
    if isinstance(raw, str):
        try:
            raw = import_string(raw)
        except ImportError as exc:
            return [], [f"DJCELERY_OPS_SCHEDULES: cannot import {raw!r}: {exc}"]
    return check_schedules(raw, known_tasks=known_tasks)


def parse_schedules(
    items: Iterable[Schedule | Mapping[str, Any]], *, known_tasks: Iterable[str] | None = None
) -> list[Schedule]:
    """Build and validate schedules; every problem is collected before raising."""
    schedules, errors = check_schedules(items, known_tasks=known_tasks)
    if errors:
        raise DeclarationError(errors)
    return schedules


def check_schedules(
    items: Iterable[Schedule | Mapping[str, Any]], *, known_tasks: Iterable[str] | None = None
) -> tuple[list[Schedule], list[str]]:
    """The valid schedules and every problem of the others, in one pass (duplicate names
    are counted over all declarations, valid or not)."""
    tasks = set(known_tasks) if known_tasks is not None else None
    schedules: list[Schedule] = []
    errors: list[str] = []
    names: list[str] = []
    for position, item in enumerate(items):
        schedule, problems = _build(position, item)
        if schedule is not None:
            problems += validate_schedule(schedule, tasks)
        name = item.name if isinstance(item, Schedule) else _mapping_name(item)
        names += [name] if name else []
        errors += problems
        if schedule is not None and not problems:
            schedules.append(schedule)
    return schedules, errors + _duplicate_names(names)


def _mapping_name(item: object) -> str | None:
    name = item.get("name") if isinstance(item, Mapping) else None
    return name if isinstance(name, str) else None


def _build(position: int, item: Schedule | Mapping[str, Any]) -> tuple[Schedule | None, list[str]]:
    if isinstance(item, Schedule):
        return item, []
    if not isinstance(item, Mapping):
        return None, [
            f"schedule #{position}: expected a dict or Schedule, got {type(item).__name__}"
        ]
    label = f"schedule {item.get('name', f'#{position}')!r}"
    unknown = sorted(set(item) - FIELD_NAMES)
    missing = [name for name in ("name", "task") if not item.get(name)]
    problems = [f"{label}: unknown field(s) {', '.join(unknown)}"] if unknown else []
    problems += [f"{label}: missing {', '.join(missing)}"] if missing else []
    if problems:
        return None, problems
    return Schedule(**item), []


def validate_schedule(schedule: Schedule, known_tasks: set[str] | None) -> list[str]:
    """Problems of one declaration, each a sentence naming the schedule."""
    label = f"schedule {schedule.name!r}"
    errors = [f"{label}: {problem}" for problem in _problems(schedule, known_tasks)]
    return errors


def _problems(schedule: Schedule, known_tasks: set[str] | None) -> Iterable[str]:
    if known_tasks is not None and schedule.task not in known_tasks:
        yield f"unknown task {schedule.task!r} (not registered with the Celery app)"
    if (schedule.crontab is None) == (schedule.interval is None):
        yield "give exactly one of crontab and interval"
    elif schedule.crontab is not None:
        yield from _crontab_problems(schedule.crontab)
    elif isinstance(schedule.interval, bool) or not isinstance(
        schedule.interval, int | float | timedelta
    ):
        yield f"interval must be seconds (a number) or a timedelta, got {schedule.interval!r}"
    elif schedule.interval_seconds() < 1:
        yield f"interval must be at least 1 second, got {schedule.interval!r}"
    yield from _timezone_problems(schedule.timezone_name())
    yield from _json_problems(schedule)
    if schedule.expires not in (DEFAULT, None) and (
        not isinstance(schedule.expires, int) or schedule.expires < 1
    ):
        yield f"expires must be a positive number of seconds or None, got {schedule.expires!r}"


def _crontab_problems(spec: object) -> Iterable[str]:
    if not isinstance(spec, str):
        yield f"crontab must be a string like '0 3 * * *', got {spec!r}"
        return
    fields = spec.split()
    if len(fields) != 5:
        yield f"invalid crontab {spec!r}: expected 5 fields (minute hour day month weekday)"
        return
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        crontab(minute, hour, day_of_week, day_of_month, month_of_year)
    except ValueError as exc:
        yield f"invalid crontab {spec!r}: {exc}"


def _timezone_problems(name: str) -> Iterable[str]:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        yield f"unknown timezone {name!r}"


def _json_problems(schedule: Schedule) -> Iterable[str]:
    try:
        json.dumps(list(schedule.args))
        json.dumps(dict(schedule.kwargs))
    except (TypeError, ValueError) as exc:
        yield f"args and kwargs must be JSON serialisable: {exc}"


def _duplicate_names(names: list[str]) -> list[str]:
    counts = Counter(names)
    return [
        f"schedule {name!r}: declared more than once ({count} times)"
        for name, count in counts.items()
        if count > 1
    ]
