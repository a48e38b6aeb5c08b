"""A real ``celery worker`` subprocess pointed at the test database and broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from django.conf import settings
from django.db import connection

from tests.celery_app import app
from tests.utils import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent


def purge_queue(queue: str) -> None:
    # A queue that does not exist yet has nothing to purge.
    with app.connection_for_write() as conn, contextlib.suppress(*conn.channel_errors):
        conn.default_channel.queue_purge(queue)


class CeleryProcess:
    """A ``celery`` subprocess in its own session, logging to ``log_path``."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, env=self.env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (warm shutdown), then SIGKILL of the process group."""
        if self.process is None or self.process.poll() is not None:
            self._close()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if getattr(self, "_log", None):
            self._log.close()


class WorkerProcess(CeleryProcess):
    """Start, inspect and stop one worker; its log is kept in ``var/tests``."""

    def __init__(
        self,
        *,
        queue: str,
        pool: str = "prefork",
        concurrency: int = 2,
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.queue = queue
        self.name = f"djops-{uuid.uuid4().hex[:8]}@%h"
        var = Path(settings.BASE_DIR) / "var" / "tests"
        var.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        self.ready_file = var / f"worker-{token}.ready"
        self.log_path = var / f"worker-{token}.log"
        self.command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
            "-P", pool, "-c", str(concurrency), "-Q", queue, "-n", self.name,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
            *args,
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DJCELERY_OPS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
            "DJCELERY_OPS_TEST_QUEUE": queue,
            "DJCELERY_OPS_TEST_READY_FILE": str(self.ready_file),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }

    def start(self, timeout: float = 60) -> WorkerProcess:
        self._spawn()
        try:
            wait_until(self._ready_or_dead, timeout=timeout, what="the worker to be ready")
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")
        return self

    def _ready_or_dead(self) -> bool:
        assert self.process is not None
        return self.ready_file.exists() or self.process.poll() is not None

    def child_pids(self) -> list[int]:
        """Pool processes of the worker, read from /proc (Linux)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def _close(self) -> None:
        super()._close()
        self.ready_file.unlink(missing_ok=True)


def settle(seconds: float) -> None:
    """Give a worker time in which something must NOT happen (used only for negatives)."""
    time.sleep(seconds)
