"""Prometheus metrics from Celery's signals and djcelery_ops' ``dead_lettered`` signal.

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

import os
import time
from typing import Any

from djcelery_ops.wire import QUEUE_HEADER, REPLAY_HEADER, SCHEDULE_SLOT_HEADER, request_header

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
        from prometheus_client import Counter, Histogram

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


def on_before_task_publish(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
    if isinstance(headers, dict) and headers.get(SCHEDULE_SLOT_HEADER):
        metrics().beat_dispatches.labels(str(sender or "")).inc()


def exposition() -> tuple[bytes, str]:
    """The text format of every metric; summed over processes in multiprocess mode."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry: Any = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def on_worker_process_shutdown(pid: int | None = None, **kwargs: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def connect() -> None:
    """Connect the receivers (idempotent); nothing without prometheus-client."""
    if not available():
        return
    from celery import signals

    from djcelery_ops.signals import dead_lettered

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
    dead_lettered.connect(on_dead_lettered, weak=False, dispatch_uid="djops.metrics.dead")
