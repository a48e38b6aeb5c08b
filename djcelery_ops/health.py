"""The running state of djcelery_ops, read once for ``celery_ops_status`` and the health view.

A face over several parts (dead letters, job runs, beat lease, the broker): its own layer
above the parts, below the command and the view that show it. Only the broker and the
workers decide health; the rest is reported for an operator to judge.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db.models import Count
from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.deadletter.services import celery_app, interrupted_replays
from djcelery_ops.runs.models import TaskRun
from djcelery_ops.schedules.leader import lease_state

TOP_GROUPS = 5
# A run still "started" this long after its hard time limit (or an hour without one) has
# lost its worker without the run being closed.
STUCK_AFTER_DEFAULT_SECONDS = 3600.0


@dataclass
class Status:
    broker: str | None = None  # None: reachable; otherwise why not
    workers: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    top_groups: list[dict[str, Any]] = field(default_factory=list)
    beat_leader: str | None = None
    stuck_runs: int = 0
    interrupted_replays: int = 0

    @property
    def problem(self) -> str | None:
        """Why this is unhealthy, in one line; None when healthy."""
        if self.broker is not None:
            return f"broker unreachable: {self.broker}"
        if not self.workers:
            return "no worker answered the ping"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.problem is None, "problem": self.problem}


def broker_problem(timeout: float) -> str | None:
    try:
        with celery_app().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))
    except Exception as error:  # any transport error means "not reachable"
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def answering_workers(timeout: float) -> list[str]:
    replies = celery_app().control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def dead_letter_counts() -> dict[str, int]:
    rows = DeadLetter.objects.order_by().values_list("status").annotate(n=Count("id"))
    return dict(rows)


def top_groups() -> list[dict[str, Any]]:
    groups = DeadLetter.objects.pending().by_fingerprint()[:TOP_GROUPS]
    return [
        {key: group[key] for key in ("fingerprint", "task_name", "exception_class", "letters")}
        for group in groups
    ]


def stuck_runs() -> int:
    limit = ops_settings.TASK_TIME_LIMIT or STUCK_AFTER_DEFAULT_SECONDS
    cutoff = timezone.now() - datetime.timedelta(seconds=float(limit) * 2)
    started = TaskRun.objects.filter(state=TaskRun.State.STARTED, started_at__lt=cutoff)
    return started.count()


def beat_leader() -> str | None:
    state = lease_state(ops_settings.BEAT_LEASE_NAME)
    return state.holder if state is not None and state.is_held else None


def read_status(*, timeout: float = 1.0) -> Status:
    status = Status(broker=broker_problem(timeout))
    if status.broker is None:
        status.workers = answering_workers(timeout)
    status.dead_letters = dead_letter_counts()
    status.top_groups = top_groups()
    status.beat_leader = beat_leader()
    status.stuck_runs = stuck_runs()
    status.interrupted_replays = interrupted_replays().count()
    return status
