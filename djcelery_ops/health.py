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
from djcelery_ops.deadletter.spool import quarantined_files, spooled_files
from djcelery_ops.queues import queue_depths
from djcelery_ops.runs.models import TaskRun
from djcelery_ops.schedules.leader import lease_state

TOP_GROUPS = 5
# A run still "started" this long after its hard time limit (or an hour without one) has
# lost its worker without the run being closed.
STUCK_AFTER_DEFAULT_SECONDS = 3600.0
# The newest job runs looked at for the recorder's lag (by primary key, an index).
NEWEST_RUNS = 50


@dataclass
class Status:
    broker: str | None = None  # None: reachable; otherwise why not
    workers: list[str] = field(default_factory=list)
    queue_depths: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    top_groups: list[dict[str, Any]] = field(default_factory=list)
    beat_leader: str | None = None
    # Seconds since the leader last renewed its lease, i.e. since its last scheduler tick
    # that renewed (it renews every third of DJCELERY_OPS_BEAT_LEASE_SECONDS).
    beat_last_tick_seconds_ago: float | None = None
    stuck_runs: int = 0
    interrupted_replays: int = 0
    # Dead letters in this host's spool: waiting for ingestion, and refused (quarantine).
    spool_files: int = 0
    spool_quarantined: int = 0
    # Seconds since the newest event of the newest job runs (received, started or
    # finished): how far the recorders lag while the workers are busy. None: no runs.
    recorder_lag_seconds: float | None = None

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


def beat_leader() -> tuple[str | None, float | None]:
    """The lease holder and the seconds since its last renewal, by the database clock."""
    state = lease_state(ops_settings.BEAT_LEASE_NAME)
    if state is None or not state.is_held:
        return None, None
    since = float(ops_settings.BEAT_LEASE_SECONDS) - state.seconds_left
    return state.holder, round(max(since, 0.0), 3)


def recorder_lag() -> float | None:
    newest = TaskRun.objects.order_by("-pk")[:NEWEST_RUNS]
    moments = [
        moment
        for run in newest.only("received_at", "started_at", "finished_at")
        for moment in (run.received_at, run.started_at, run.finished_at)
        if moment is not None
    ]
    if not moments:
        return None
    return round((timezone.now() - max(moments)).total_seconds(), 3)


def _depths_or_nothing(fresh: bool) -> dict[str, int]:
    try:
        return queue_depths(fresh=fresh)
    except Exception:  # the broker went between the probe and this: reported by the probe
        return {}


def read_status(*, timeout: float = 1.0, fresh_depths: bool = False) -> Status:
    """``fresh_depths``: measure the queues now (the command) rather than reuse this
    process's measurement (the readiness view, polled like a scrape)."""
    status = Status(broker=broker_problem(timeout))
    if status.broker is None:
        status.workers = answering_workers(timeout)
        status.queue_depths = _depths_or_nothing(fresh_depths)
    status.dead_letters = dead_letter_counts()
    status.top_groups = top_groups()
    status.beat_leader, status.beat_last_tick_seconds_ago = beat_leader()
    status.stuck_runs = stuck_runs()
    status.interrupted_replays = interrupted_replays().count()
    status.spool_files = len(spooled_files())
    status.spool_quarantined = len(quarantined_files())
    status.recorder_lag_seconds = recorder_lag()
    return status
