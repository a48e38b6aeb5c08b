"""Measure ``idempotency``: an idempotent OpsTask no-op against a plain ``acks_late`` no-op.

Atomic mode (the key row inserted in the task's transaction) and lease mode (claim with a
lease and a fencing token, then complete) are each run against the same round's plain
Celery run. Every message has its own key (``bench:<token>:<n>``), so every task claims
and completes one key; the bench checks that every key ended ``done``. The worker runs
with ``CELERY_DB_REUSE_MAX`` set, as the README recommends: without it Celery's Django
fixup opens a new database connection for every task.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.report import ratio_row
from bench.workers import Mode, run_modes

NAME = "idempotency"


def _keyed(token: str, n: int) -> tuple[Any, ...]:
    return (token, n)


MODES = {
    "plain": Mode("bench.plain"),
    "atomic": Mode("bench.idempotent_atomic", _keyed),
    "lease": Mode("bench.idempotent_lease", _keyed),
}


def run_round(context: Context, round_index: int) -> dict[str, Any]:
    from djcelery_ops.models import IdempotencyKey

    results: dict[str, Any] = {}
    for name, result in run_modes(context, MODES, round_index):
        if name != "plain":
            keys = IdempotencyKey.objects.filter(key__startswith=f"bench:{result['token']}:")
            done = keys.filter(state="done").count()
            if done != context.tasks:
                raise RuntimeError(f"{name}: {done} keys done, expected {context.tasks}")
            keys.delete()
        results[name] = result
    return results


def rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        ratio_row(
            "idempotency", "idempotent OpsTask, atomic mode / plain acks_late", rounds,
            "atomic", "plain", goal=(">=", 0.75),
        ),
        ratio_row(
            "idempotency", "idempotent OpsTask, lease mode / plain acks_late", rounds,
            "lease", "plain", goal=(">=", 0.70),
        ),
    ]  # fmt: skip
