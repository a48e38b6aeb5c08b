"""A real ``celery beat`` subprocess with the leader-locked scheduler, on the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from tests.proxy import TcpProxy
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

    def pause(self) -> None:
        """SIGSTOP: the process freezes wherever it is, holding what it holds."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, the lease is left to expire."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class StallingProxy(TcpProxy):
    """A ``TcpProxy`` that can also stall: bytes are held, connections stay open, so a
    client waits for an answer that does not come (a broker that hangs), until resumed."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        super().__init__(target_host, target_port, listen_port)
        self._flowing = threading.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _pipe(self, source: socket.socket, sink: socket.socket, link: Any = None) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)
