"""``manage.py celery_ops_status``: one line per part of djcelery_ops about its running state."""

from __future__ import annotations

import json as _json
from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError, CommandParser

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.spool import quarantined_files, spool_dir, spooled_files
from djcelery_ops.health import Status, read_status
from djcelery_ops.management.base import EXIT_UNHEALTHY, OpsCommand
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


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f} s"


def health_lines(status: Status) -> list[str]:
    letters = ", ".join(f"{state} {n}" for state, n in sorted(status.dead_letters.items()))
    depths = ", ".join(f"{queue} {n}" for queue, n in sorted(status.queue_depths.items()))
    lines = [
        f"Broker: {'reachable' if status.broker is None else 'unreachable: ' + status.broker}",
        f"Workers answering: {len(status.workers)}"
        + (f" ({', '.join(status.workers)})" if status.workers else ""),
        f"Queue depths: {depths or 'unknown'}",
        f"Dead letters: {letters or 'none'}",
    ]
    lines += [
        f"  {group['letters']} pending: {group['task_name']} {group['exception_class']} "
        f"[{group['fingerprint'][:12]}]"
        for group in status.top_groups
    ]
    lines += [
        f"Stuck runs (started, past twice the time limit): {status.stuck_runs}",
        f"Interrupted replays (replay_dead_letters --recover): {status.interrupted_replays}",
        f"Beat leader's last tick: {_seconds(status.beat_last_tick_seconds_ago)} ago"
        if status.beat_leader
        else "Beat leader's last tick: none",
        f"Job-run recorder lag (newest run event): {_seconds(status.recorder_lag_seconds)}",
    ]
    return lines


class Command(OpsCommand):
    help = (
        "Show the operational state of djcelery_ops: broker, workers, queue depths, dead "
        "letters, beat leader, dead-letter spool, stuck runs, interrupted replays, recorder "
        "lag (--health, --json). "
        "Exits 6 when unhealthy."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--health",
            action="store_true",
            help="Also probe the broker and the workers, measure queue depths, count dead "
            "letters, stuck runs and interrupted replays; exit 6 with the reason when unhealthy.",
        )
        parser.add_argument("--json", action="store_true", help="--health as one JSON object.")
        parser.add_argument(
            "--timeout", type=float, default=1.0, help="Seconds for the broker and the ping."
        )

    def handle(
        self, *, health: bool = False, json: bool = False, timeout: float = 1.0, **_: Any
    ) -> None:
        if not (health or json):
            self._write_sections()
            return
        status = read_status(timeout=timeout, fresh_depths=True)
        if json:
            self.stdout.write(_json.dumps(status.as_dict(), default=str, sort_keys=True))
        else:
            for line in health_lines(status):
                self.stdout.write(line)
            self._write_sections()
        if status.problem is not None:
            raise CommandError(f"unhealthy: {status.problem}", returncode=EXIT_UNHEALTHY)

    def _write_sections(self) -> None:
        for section in SECTIONS:
            for line in section():
                self.stdout.write(line)
