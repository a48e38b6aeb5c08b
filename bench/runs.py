"""Measure ``runs``: OpsTask with run recording against plain Celery ``acks_late``.

Both are no-op tasks run by a prefork worker on the same broker and database
(``bench.workers``). The ratio is OpsTask's throughput / plain Celery's in the same round;
the CPU ratio is plain Celery's worker CPU per task / OpsTask's (1.00: as cheap). After the
OpsTask mode the bench also waits until every run is in the database and reports when.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.report import ratio_row
from bench.workers import Mode, run_modes, wait_for

NAME = "runs"
MODES = {
    "plain": Mode("bench.plain"),
    "ops": Mode("bench.ops"),
}


def run_round(context: Context, round_index: int) -> dict[str, Any]:
    from djcelery_ops.models import TaskRun

    results: dict[str, Any] = {}
    for name, result in run_modes(context, MODES, round_index):
        if name == "ops":
            recorded = TaskRun.objects.filter(task_name="bench.ops", state="succeeded")
            result["all_recorded_after_s"] = result["seconds"] + wait_for(
                recorded.count, context.tasks, context.timeout
            )
        results[name] = result
        TaskRun.objects.filter(task_name__startswith="bench.").delete()
    return results


def rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        ratio_row(
            "runs", "OpsTask + run recording / plain Celery acks_late", rounds, "ops", "plain",
            goal=(">=", 0.95),
        )
    ]  # fmt: skip
