"""When periodic tasks run next, and where a crontab meets a daylight-saving change."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from django_celery_beat.models import CrontabSchedule, PeriodicTask

SCAN_DAYS = 366


def next_run_times(
    task: PeriodicTask, *, count: int = 5, now: datetime | None = None
) -> list[datetime]:
    """The next ``count`` run times, in the schedule's timezone (UTC for intervals)."""
    now = now or datetime.now(UTC)
    if task.crontab is not None:
        return list(_crontab_runs(task.crontab, now, count))
    if task.interval is not None:
        every = timedelta(**{task.interval.period: task.interval.every})
        first = max((task.last_run_at or now) + every, now)
        return [(first + every * i).astimezone(UTC) for i in range(count)]
    if task.clocked is not None:
        return [task.clocked.clocked_time]
    return []


def _crontab_runs(row: CrontabSchedule, now: datetime, count: int) -> Iterator[datetime]:
    cron: Any = row.schedule
    zone = ZoneInfo(str(row.timezone))
    last = now.astimezone(zone)
    for _ in range(count):
        start, delta, _now = cron.remaining_delta(last, tz=zone)
        # Through UTC, so a wall time in a DST gap comes out as the instant it stands for.
        last = (start + delta).astimezone(UTC).astimezone(zone)
        yield last


@dataclass(frozen=True)
class DstClash:
    """A crontab time that does not exist (gap) or exists twice (overlap) on a date."""

    kind: str  # "gap" or "overlap"
    wall_time: datetime  # naive, in the schedule's timezone
    timezone: str

    def __str__(self) -> str:
        when = f"{self.wall_time:%Y-%m-%d %H:%M}"
        if self.kind == "gap":
            return (
                f"{when} does not exist in {self.timezone} (clocks go forward): "
                "that run is moved or skipped"
            )
        return f"{when} happens twice in {self.timezone} (clocks go back): that run may repeat"


def dst_clashes(row: CrontabSchedule, *, now: datetime | None = None) -> list[DstClash]:
    """Crontab times within a year that fall into a DST gap or overlap of its timezone."""
    cron: Any = row.schedule
    zone = ZoneInfo(str(row.timezone))
    clashes = []
    for kind, first, last in _ambiguous_wall_ranges(zone, now or datetime.now(UTC)):
        wall = first
        while wall < last:
            if _matches(cron, wall):
                clashes.append(DstClash(kind, wall, str(zone)))
                break
            wall += timedelta(minutes=1)
    return clashes


def _matches(cron: Any, wall: datetime) -> bool:
    return (
        wall.minute in cron.minute
        and wall.hour in cron.hour
        and wall.day in cron.day_of_month
        and wall.month in cron.month_of_year
        and wall.isoweekday() % 7 in cron.day_of_week
    )


def _ambiguous_wall_ranges(zone: tzinfo, now: datetime) -> Iterator[tuple[str, datetime, datetime]]:
    """Per offset change in the next year: the naive wall-time range skipped or repeated."""
    for instant, before, after in _transitions(zone, now):
        wall = (instant + before).replace(tzinfo=None)
        if after > before:
            yield "gap", wall, wall + (after - before)
        else:
            yield "overlap", wall - (before - after), wall


def _transitions(zone: tzinfo, now: datetime) -> Iterator[tuple[datetime, timedelta, timedelta]]:
    step = timedelta(hours=1)
    moment = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    offset = _offset(zone, moment)
    for _ in range(SCAN_DAYS * 24):
        following = moment + step
        next_offset = _offset(zone, following)
        if next_offset != offset:
            yield _bisect(zone, moment, following, offset), offset, next_offset
        moment, offset = following, next_offset


def _bisect(zone: tzinfo, low: datetime, high: datetime, before: timedelta) -> datetime:
    """The first instant (to the minute) with the new offset."""
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) / 2
        if _offset(zone, middle) == before:
            low = middle
        else:
            high = middle
    return high.replace(second=0, microsecond=0)


def _offset(zone: tzinfo, moment: datetime) -> timedelta:
    return moment.astimezone(zone).utcoffset() or timedelta(0)
