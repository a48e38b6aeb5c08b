"""Prometheus metrics from Celery's signals and djcelery_ops' own (``djcelery_ops.signals``).

The parts never import this module: they send signals, this module receives them. Queue
depths and spool files are read when the view is scraped (``OpsCollector``): queue depths
from the broker at most once per ``DJCELERY_OPS_QUEUE_DEPTH_CACHE_SECONDS``, spool files
from the directory of the host that serves the view.

Needs the ``[prometheus]`` extra (prometheus-client); without it ``connect()`` does nothing
and the view answers 501. Only the app config imports this module. Labels are bounded:
task names, queues, reasons and outcomes, never arguments, task ids or messages.

Prefork workers: each pool child counts in its own process, so set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, the same for the worker and the web
process that serves the view, cleared at each deploy) in the environment before anything
imports prometheus_client. The view then sums every process's files with
``MultiProcessCollector``.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from djcelery_ops.wire import QUEUE_HEADER, REPLAY_HEADER, SCHEDULE_SLOT_HEADER, request_header

logger = logging.getLogger("djcelery_ops.metrics")
PREFIX = "djcelery_ops"
RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_started: dict[str, float] = {}
_metrics: Any = None


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def metrics() -> Any:
    """The metric objects, made on first use (made twice, prometheus_client refuses)."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        task = ["task_name", "queue"]
        self.started = Counter(f"{PREFIX}_tasks_started", "Tasks started by a worker.", task)
        self.succeeded = Counter(f"{PREFIX}_tasks_succeeded", "Tasks that returned.", task)
        self.failed = Counter(f"{PREFIX}_tasks_failed", "Tasks that raised for good.", task)
        self.retried = Counter(f"{PREFIX}_tasks_retried", "Retries asked by tasks.", task)
        self.runtime = Histogram(
            f"{PREFIX}_task_runtime_seconds", "Run time of tasks.", task, buckets=RUNTIME_BUCKETS
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Final failures kept as dead letters.",
            ["task_name", "reason"],
        )
        self.replays = Counter(
            f"{PREFIX}_replays_finished", "Replayed tasks, by how they ended.", ["outcome"]
        )
        self.beat_dispatches = Counter(
            f"{PREFIX}_beat_dispatches", "Periodic runs sent by beat.", ["task_name"]
        )
        self.leader_changes = Counter(
            f"{PREFIX}_beat_leader_changes",
            "Beat processes taking (acquired) or losing (lost) the lease.",
            ["change"],
        )
        self.replays_published = Counter(
            f"{PREFIX}_replays_published",
            "Replays of dead letters: published, unconfirmed by the broker, or skipped.",
            ["outcome"],
        )
        self.discards = Counter(
            f"{PREFIX}_discards", "Discards of dead letters: discarded or skipped.", ["outcome"]
        )
        self.duplicates = Counter(
            f"{PREFIX}_idempotency_duplicates_suppressed",
            "Deliveries whose idempotency key was done: the body did not run.",
            ["task_name"],
        )
        self.run_events_dropped = Counter(
            f"{PREFIX}_recorder_dropped_events",
            "Job-run events the recorder gave up.",
            ["reason"],
        )
        self.recorder_backlog = Gauge(
            f"{PREFIX}_recorder_backlog",
            "Task ids waiting in the job-run recorders' buffers after their last flush.",
            multiprocess_mode="livesum",
        )


def _queue(request: Any) -> str:
    queue = request_header(request, QUEUE_HEADER)
    if queue:
        return queue
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


def _labels(task: Any) -> tuple[str, str]:
    return str(getattr(task, "name", "") or ""), _queue(getattr(task, "request", None))


def on_task_prerun(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    _started[task_id] = time.monotonic()
    metrics().started.labels(*_labels(task)).inc()


def on_task_postrun(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        metrics().runtime.labels(*_labels(task)).observe(time.monotonic() - started)


def on_task_success(sender: Any = None, **kwargs: Any) -> None:
    metrics().succeeded.labels(*_labels(sender)).inc()
    if request_header(sender.request, REPLAY_HEADER):
        metrics().replays.labels("succeeded").inc()


def on_task_failure(sender: Any = None, **kwargs: Any) -> None:
    metrics().failed.labels(*_labels(sender)).inc()
    if sender is not None and request_header(sender.request, REPLAY_HEADER):
        metrics().replays.labels("failed").inc()


def on_task_retry(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    metrics().retried.labels(str(getattr(sender, "name", "") or ""), _queue(request)).inc()


def on_dead_lettered(record: Any = None, **kwargs: Any) -> None:
    metrics().dead_letters.labels(str(record.task_name), str(record.reason)).inc()


def _add(counter: Any, outcome: str, count: int) -> None:
    if count:
        counter.labels(outcome).inc(count)


def on_replays_published(
    published: int = 0, unconfirmed: int = 0, skipped: int = 0, **kwargs: Any
) -> None:
    replays = metrics().replays_published
    _add(replays, "published", published)
    _add(replays, "unconfirmed", unconfirmed)
    _add(replays, "skipped", skipped)


def on_dead_letters_discarded(discarded: int = 0, skipped: int = 0, **kwargs: Any) -> None:
    _add(metrics().discards, "discarded", discarded)
    _add(metrics().discards, "skipped", skipped)


def on_duplicate_suppressed(task_name: str = "", **kwargs: Any) -> None:
    metrics().duplicates.labels(str(task_name)).inc()


def on_beat_leadership_changed(leading: bool = False, **kwargs: Any) -> None:
    metrics().leader_changes.labels("acquired" if leading else "lost").inc()


def on_run_events_dropped(count: int = 0, reason: str = "", **kwargs: Any) -> None:
    _add(metrics().run_events_dropped, str(reason), count)


def on_run_events_flushed(backlog: int = 0, **kwargs: Any) -> None:
    metrics().recorder_backlog.set(backlog)


class OpsCollector:
    """Read at each scrape: queue depths (cached) and this host's dead-letter spool."""

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from djcelery_ops.deadletter.spool import quarantined_files, spooled_files
        from djcelery_ops.queues import queue_depths

        spool = GaugeMetricFamily(
            f"{PREFIX}_spool_files",
            "Dead letters in this host's spool: waiting for ingestion, or quarantined.",
            labels=["state"],
        )
        spool.add_metric(["waiting"], len(spooled_files()))
        spool.add_metric(["quarantined"], len(quarantined_files()))
        yield spool
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_queue_depth_up", "1 when the broker answered the last queue measurement."
        )
        try:
            depths = queue_depths()
        except Exception:  # the broker is away: say so, do not fail the scrape
            logger.warning("queue depths not measured", exc_info=True)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, count in sorted(depths.items()):
                depth.add_metric([queue], count)
        yield depth
        yield up


def on_before_task_publish(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
    if isinstance(headers, dict) and headers.get(SCHEDULE_SLOT_HEADER):
        metrics().beat_dispatches.labels(str(sender or "")).inc()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # marked dead and removed since the listing
        return 0


def exposition() -> tuple[bytes, str]:
    """The text format of every metric; summed over processes in multiprocess mode."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    class StartedFilesCollector(MultiProcessCollector):
        # A process creates its metrics file empty and sizes it a moment later: reading it
        # in between raises struct.error and fails the whole scrape, for good if the process
        # died in that moment (prometheus/client_python#1199). An empty file holds no value.
        def collect(self) -> Any:
            files = glob.glob(os.path.join(self._path, "*.db"))
            started = [f for f in files if _size(f) > 0]
            return self.merge(started, accumulate=True)  # type: ignore[no-untyped-call]

    registry: Any = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        StartedFilesCollector(registry)  # type: ignore[no-untyped-call]
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(OpsCollector())
    return generate_latest(registry) + generate_latest(scraped), CONTENT_TYPE_LATEST


def on_worker_process_shutdown(pid: int | None = None, **kwargs: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def connect() -> None:
    """Connect the receivers (idempotent); nothing without prometheus-client."""
    if not available():
        return
    from celery import signals

    from djcelery_ops import signals as ops_signals

    for signal, receiver in (
        (signals.task_prerun, on_task_prerun),
        (signals.task_postrun, on_task_postrun),
        (signals.task_success, on_task_success),
        (signals.task_failure, on_task_failure),
        (signals.task_retry, on_task_retry),
        (signals.before_task_publish, on_before_task_publish),
        (signals.worker_process_shutdown, on_worker_process_shutdown),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"djops.metrics.{receiver.__name__}")
    ours: tuple[tuple[Any, Callable[..., None]], ...] = (
        (ops_signals.dead_lettered, on_dead_lettered),
        (ops_signals.replays_published, on_replays_published),
        (ops_signals.dead_letters_discarded, on_dead_letters_discarded),
        (ops_signals.duplicate_suppressed, on_duplicate_suppressed),
        (ops_signals.beat_leadership_changed, on_beat_leadership_changed),
        (ops_signals.run_events_dropped, on_run_events_dropped),
        (ops_signals.run_events_flushed, on_run_events_flushed),
    )
    for ops_signal, ops_receiver in ours:
        uid = f"djops.metrics.{ops_receiver.__name__}"
        ops_signal.connect(ops_receiver, weak=False, dispatch_uid=uid)
