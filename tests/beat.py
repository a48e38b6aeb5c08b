"""A real ``celery beat`` subprocess with the leader-locked scheduler, on the test database."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from django.conf import settings
from django.db import connection

from tests.worker import CeleryProcess

SCHEDULER = "djcelery_ops.LockedDatabaseScheduler"  # the public path users put in settings


class BeatProcess(CeleryProcess):
    """Start, inspect and stop one beat; its log is kept in ``var/tests``."""

    def __init__(self, *, queue: str, max_interval: int = 1, env: Mapping[str, str] | None = None):
        var = Path(settings.BASE_DIR) / "var" / "tests"
        var.mkdir(parents=True, exist_ok=True)
        self.log_path = var / f"beat-{uuid.uuid4().hex[:8]}.log"
        self.command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "beat",
            "-S", SCHEDULER, "--max-interval", str(max_interval), "-l", "INFO",
            "--no-enable-remote-control",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DJCELERY_OPS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
            "DJCELERY_OPS_TEST_QUEUE": queue,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }

    def start(self) -> BeatProcess:
        self._spawn()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, the lease is left to expire."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
