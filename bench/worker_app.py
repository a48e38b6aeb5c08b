"""The Celery app and no-op tasks the bench's worker subprocesses run.

``celery -A bench.worker_app worker`` loads it, with the test suite's settings
(``tests.settings``: ``DATABASE_URL`` and ``CELERY_BROKER_URL`` select the services).
Every task finishes by appending one byte to ``BENCH_COUNTER`` from Celery's
``task_postrun`` signal, which the trace sends after ``on_success``/``on_failure`` (so a
dead letter is kept before its byte is written): the file size is the number of tasks
done, at the same tiny cost in every mode.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from celery import Celery  # noqa: E402
from celery.signals import (  # noqa: E402
    task_postrun,
    worker_init,
    worker_process_init,
    worker_ready,
)

from djcelery_ops.task.base import OpsTask  # noqa: E402

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(result_backend=None, worker_prefetch_multiplier=4)

_counter_fd: int | None = None


class BenchFailure(Exception):
    """What the failing tasks raise (neither retried nor a PermanentError)."""


@app.task(name="bench.plain", acks_late=True, ignore_result=True)
def plain(n: int = 0) -> None:
    return None


@app.task(name="bench.plain_fail", acks_late=True, ignore_result=True)
def plain_fail(n: int = 0) -> None:
    raise BenchFailure(f"bench failure {n}")


@app.task(name="bench.ops", base=OpsTask, ignore_result=True)
def ops(n: int = 0) -> None:
    return None


@app.task(name="bench.ops_fail", base=OpsTask, ignore_result=True)
def ops_fail(n: int = 0) -> None:
    raise BenchFailure(f"bench failure {n}")


@app.task(
    name="bench.idempotent_atomic", base=OpsTask, ignore_result=True,
    idempotency_key="bench:{token}:{n}", idempotency_mode="atomic",
)  # fmt: skip
def idempotent_atomic(token: str, n: int) -> None:
    return None


@app.task(
    name="bench.idempotent_lease", base=OpsTask, ignore_result=True,
    idempotency_key="bench:{token}:{n}", idempotency_mode="lease",
)  # fmt: skip
def idempotent_lease(token: str, n: int) -> None:
    return None


@task_postrun.connect(dispatch_uid="bench.count")
def _count(**kwargs: object) -> None:
    """One byte per finished task, appended atomically."""
    global _counter_fd
    counter = os.environ.get("BENCH_COUNTER")
    if counter is None:
        return
    if _counter_fd is None:
        _counter_fd = os.open(counter, os.O_WRONLY | os.O_APPEND)
    os.write(_counter_fd, b".")


@worker_init.connect(dispatch_uid="bench.quiet")
@worker_process_init.connect(dispatch_uid="bench.quiet_child")
def _quiet_logs(**kwargs: object) -> None:
    # The worker runs at -l WARNING; the test settings log djcelery_ops events at INFO.
    logging.getLogger("djcelery_ops").setLevel(logging.WARNING)
    if os.environ.get("BENCH_CAPTURE_ALL_TASKS") == "0":
        # The plain-Celery side of the dead-lettering measure: djcelery_ops is installed in
        # the worker, and by default it dead-letters plain tasks' failures too.
        from django.conf import settings

        from djcelery_ops.conf import ops_settings

        settings.DJCELERY_OPS_DEAD_LETTER_CAPTURE_ALL_TASKS = False
        ops_settings.reload()


@worker_ready.connect(dispatch_uid="bench.ready")
def _announce_ready(**kwargs: object) -> None:
    ready = os.environ.get("BENCH_READY")
    if ready:
        path = Path(ready)
        path.with_suffix(".tmp").write_text(str(time.monotonic()))
        path.with_suffix(".tmp").replace(path)  # the bench never reads a half-written file


if os.environ.get("BENCH_PROFILE"):
    # bench.profile_task: profile a solo-pool worker from ready to shutdown (start-up excluded).
    import cProfile

    from celery.signals import worker_shutdown

    # CPU time, not wall time: on a busy machine wall time is mostly waiting for a core.
    _profiler = cProfile.Profile(time.process_time)

    @worker_ready.connect(dispatch_uid="bench.profile_start")
    def _profile_start(**kwargs: object) -> None:
        _profiler.enable()

    @worker_shutdown.connect(dispatch_uid="bench.profile_stop")
    def _profile_stop(**kwargs: object) -> None:
        _profiler.disable()
        _profiler.dump_stats(os.environ["BENCH_PROFILE"])
