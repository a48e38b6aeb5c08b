"""``manage.py celery_ops_status``: one line per part of djcelery_ops about its running state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.spool import quarantined_files, spool_dir, spooled_files
from djcelery_ops.management.base import OpsCommand
from djcelery_ops.schedules.leader import lease_state


def beat_leader_lines() -> list[str]:
    """Who dispatches periodic tasks, judged by the database clock."""
    name = ops_settings.BEAT_LEASE_NAME
    state = lease_state(name)
    if state is None:
        return ["Beat leader: none (no beat process with the locked scheduler)"]
    if not state.is_held:
        return [f"Beat leader: none (lease {name!r} expired or released)"]
    return [f"Beat leader: {state.holder} (lease {name!r}, expires in {state.seconds_left:.1f} s)"]


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def spool_lines() -> list[str]:
    """Dead letters written on THIS host while the database was unreachable, not yet
    ingested (the worker ingests them on its own once the database answers), and the
    files the database refused, which wait for a person. Nothing when both are empty."""
    directory = spool_dir()
    lines = []
    waiting = len(spooled_files())
    if waiting:
        lines.append(f"Dead-letter spool: {_files(waiting)} waiting in {directory}")
    refused = len(quarantined_files())
    if refused:
        lines.append(f"Dead-letter quarantine: {_files(refused)} for a person in {directory}")
    return lines


SECTIONS: list[Callable[[], list[str]]] = [beat_leader_lines, spool_lines]


class Command(OpsCommand):
    help = "Show the operational state of djcelery_ops (beat leader, dead-letter spool)."

    def handle(self, **_: Any) -> None:
        for section in SECTIONS:
            for line in section():
                self.stdout.write(line)
