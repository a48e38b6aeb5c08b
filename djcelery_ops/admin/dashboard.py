"""The job-run dashboard: an admin view with server-side SVG charts."""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from djcelery_ops.admin import charts
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.runs.models import TaskRun

WINDOWS = {"1h": 1, "6h": 6, "24h": 24, "7d": 24 * 7}
DEFAULT_WINDOW = "24h"
TOP = 10
HOUR = datetime.timedelta(hours=1)


def dashboard_data(hours: int, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, for the runs received in the last ``hours``."""
    now = now or timezone.now()
    since = now - datetime.timedelta(hours=hours)
    runs = TaskRun.objects.filter(received_at__gte=since)
    stats = runs.stats()
    total = sum(row["runs"] for row in stats)
    failed = sum(row["failures"] for row in stats)
    failing = sorted((r for r in stats if r["failures"]), key=lambda r: -r["failures"])[:TOP]
    pending_letters = DeadLetter.objects.pending()
    return {
        "total": total,
        "failed": failed,
        "failure_rate": failed / total if total else 0.0,
        "running": TaskRun.objects.running().count(),
        "stuck": TaskRun.objects.stuck().count(),
        "dead_letters_pending": pending_letters.count(),
        "stats": stats[:TOP],
        "throughput": _hourly(runs, since, now),
        "failing": failing,
        "letters_by_reason": list(
            pending_letters.order_by().values_list("reason").annotate(n=Count("id")).order_by("-n")
        ),
    }


def _hourly(runs: Any, since: datetime.datetime, now: datetime.datetime) -> list[charts.Bucket]:
    # TruncHour truncates in the current time zone, so the buckets start on its hours too
    # (in Asia/Kolkata on :30 UTC). Rows are placed by UTC offset from the first bucket:
    # subtracting two datetimes of one zone would ignore a DST change between them.
    rows = (
        runs.order_by()
        .annotate(hour=TruncHour("received_at"))
        .values("hour")
        .annotate(
            total=Count("*"), failed=Count("state", filter=Q(state__in=TaskRun.FAILED_STATES))
        )
    )
    start = timezone.localtime(since).replace(minute=0, second=0, microsecond=0)
    start = start.astimezone(datetime.UTC)
    size = int((now - start) // HOUR) + 1
    totals, failed = [0] * size, [0] * size
    for row in rows:
        index = int((row["hour"].astimezone(datetime.UTC) - start) // HOUR)
        if 0 <= index < size:
            totals[index] += row["total"]
            failed[index] += row["failed"]
    return [
        charts.Bucket(timezone.localtime(start + index * HOUR), totals[index], failed[index])
        for index in range(size)
    ]


def _runtimes(row: dict[str, Any]) -> dict[str, float | None]:
    return {"p50": row["p50"], "p95": row["p95"], "max": row["max_runtime"]}


def dashboard_charts(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "throughput": charts.throughput_chart(data["throughput"]),
        "runtime": charts.runtime_chart(
            [
                (
                    row["task_name"],
                    {"p50": row["p50"], "p95": row["p95"], "max": row["max_runtime"]},
                )
                for row in data["stats"]
            ]
        ),
        "failing": charts.bar_chart(
            [(row["task_name"], row["failures"]) for row in data["failing"]],
            "Top failing tasks (failed or dead-lettered runs)",
            colour=charts.FAIL_COLOUR,
        ),
        "dead_letters": charts.bar_chart(
            [(str(reason), n) for reason, n in data["letters_by_reason"]],
            f"Pending dead letters by reason ({data['dead_letters_pending']})",
            colour=charts.FAIL_COLOUR,
        ),
    }


def dashboard_view(request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
    window = request.GET.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    data = dashboard_data(WINDOWS[window])
    context.update(
        title="Job runs dashboard",
        window=window,
        windows=list(WINDOWS),
        data=data,
        charts=dashboard_charts(data),
    )
    return TemplateResponse(request, "admin/djcelery_ops/taskrun/dashboard.html", context)
