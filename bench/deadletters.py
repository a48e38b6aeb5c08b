"""Measure ``deadletters``: every task failing, OpsTask (dead letters kept) against plain
Celery tasks that fail (logged by Celery, nothing kept).

Both raise the same exception from a no-op body; OpsTask neither retries it nor treats it
as permanent, so each failure is dead-lettered with reason ``exception`` (and its run
recorded as dead-lettered). The bench checks that every failure became a dead letter.
The plain side's worker runs with ``DJCELERY_OPS_DEAD_LETTER_CAPTURE_ALL_TASKS = False``
(by default djcelery_ops dead-letters plain tasks' failures too), and the bench checks that
it kept none.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.report import ratio_row
from bench.workers import Mode, run_modes, wait_for

NAME = "deadletters"
MODES = {
    "plain": Mode("bench.plain_fail", env={"BENCH_CAPTURE_ALL_TASKS": "0"}),
    "ops": Mode("bench.ops_fail"),
}


def run_round(context: Context, round_index: int) -> dict[str, Any]:
    from djcelery_ops.models import DeadLetter, TaskRun

    results: dict[str, Any] = {}
    for name, result in run_modes(context, MODES, round_index):
        if name == "ops":
            letters = DeadLetter.objects.filter(task_name="bench.ops_fail")
            # Captured in the child before the counter byte: already all there.
            result["all_captured_after_s"] = result["seconds"] + wait_for(
                letters.count, context.tasks, context.timeout
            )
            letters.delete()
        elif DeadLetter.objects.filter(task_name="bench.plain_fail").exists():
            raise RuntimeError("the plain side dead-lettered its failures: it is not plain")
        TaskRun.objects.filter(task_name__startswith="bench.").delete()
        results[name] = result
    return results


def rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        ratio_row(
            "deadletters", "dead-lettering: OpsTask failing / plain Celery failing", rounds,
            "ops", "plain", goal=(">=", 0.80),
        )
    ]  # fmt: skip
