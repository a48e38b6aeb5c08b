"""``python -m bench``: every measure in one run, one table, one JSON file."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MEASURES = ("runs", "idempotency", "deadletters", "replay", "beat")
VERSIONED = ("celery", "kombu", "Django", "django-celery-beat", "psycopg", "redis")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run every djcelery_ops measure in one go."
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("CELERY_BROKER_URL"),
        help="broker URL: redis://... or amqp://... (default $CELERY_BROKER_URL)",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("DATABASE_URL"),
        help="postgres://... or sqlite:///...; its name must contain 'bench' "
        "(created if missing, migrated, the bench's rows deleted)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; smoke: 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument(
        "--only",
        default=",".join(MEASURES),
        help=f"comma-separated measures among {', '.join(MEASURES)}",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="tasks per side of the worker measures (3000; smoke: 30)",
    )
    parser.add_argument(
        "--replay-count",
        type=int,
        default=None,
        help="dead letters replayed per round (100000; smoke: 200)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the report (var/bench/<timestamp>.json)",
    )
    parser.add_argument(
        "--note",
        default="",
        help="a note kept with the figures (the README shows it), e.g. that the machine was shared",
    )
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="rewrite README.md's Performance section from this run",
    )
    parser.add_argument(
        "--readme-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="only rewrite README.md's Performance section from a report",
    )
    options = parser.parse_args(argv)
    options.only = [m.strip() for m in options.only.split(",") if m.strip()]
    unknown = sorted(set(options.only) - set(MEASURES))
    if unknown:
        parser.error(f"unknown measure(s): {', '.join(unknown)}; known: {', '.join(MEASURES)}")
    if options.readme_from is None and not (options.broker and options.database):
        parser.error("give --broker and --database (or CELERY_BROKER_URL and DATABASE_URL)")
    if options.rounds is None:
        options.rounds = 1 if options.smoke else 3
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    # A stopped run stops its worker subprocesses too (their ``finally`` blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if options.readme_from is not None:
        write_readme(json.loads(options.readme_from.read_text()))
        return
    from bench import context

    context.check_database_name(options.database)
    context.configure(options.broker, options.database)
    ctx = context.setup(options.database, options.concurrency, options.smoke)
    ctx.tasks = options.tasks or ctx.tasks
    ctx.replay_count = options.replay_count or ctx.replay_count
    report = start_report(options, ctx)
    print(f"bench: {options.rounds} round(s) of {', '.join(options.only)}; "
          f"{report['options']['database_vendor']} + {report['options']['broker_scheme']}, "
          f"{'smoke sizes' if options.smoke else 'full sizes'}", flush=True)  # fmt: skip
    modules = {name: _module(name) for name in options.only}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in options.only}
    path = options.json or REPO / "var" / "bench" / (
        report["started_at"][:19].replace(":", "") + ".json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    for index in range(options.rounds):
        for name, module in modules.items():
            print(f"  round {index + 1}/{options.rounds}: {name} ...", end=" ", flush=True)
            started = time.monotonic()
            rounds[name].append(module.run_round(ctx, index))
            print(f"{time.monotonic() - started:.0f} s", flush=True)
            # Written after every measure: a long run stopped halfway keeps what it measured.
            save(path, report, modules, rounds, rounds_done=index + 1)
    from bench.report import text_table

    print()
    print(text_table(report["rows"]))
    print("ratio: the round's own throughput ratio, median of rounds (min-max); CPU/task ratio:")
    print("baseline's CPU per task / this one's, worker processes (beat: this process).")
    print(f"report: {path}")
    if options.write_readme:
        write_readme(report)


def save(
    path: Path, report: dict[str, Any], modules: dict[str, Any],
    rounds: dict[str, list[dict[str, Any]]], rounds_done: int,
) -> None:  # fmt: skip
    from bench.report import markdown_section

    report["rounds_done"] = rounds_done
    report["rounds_data"] = rounds
    report["rows"] = [
        row for name, module in modules.items() if rounds[name] for row in module.rows(rounds[name])
    ]
    finish_report(report)
    report["readme_section"] = markdown_section(report)  # rendered in every run: cannot rot
    path.write_text(json.dumps(report, indent=2) + "\n")


def _module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"bench.{name}")


def start_report(options: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    from django.db import connection

    return {
        "command": "python -m bench " + shlex.join(_shown_argv()),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "note": options.note,
        "rounds": options.rounds,
        "options": {
            "only": options.only,
            "smoke": options.smoke,
            "concurrency": options.concurrency,
            "tasks": ctx.tasks,
            "replay_count": ctx.replay_count,
            "beat_tasks": ctx.beat_tasks,
            "beat_due": ctx.beat_due,
            "beat_idle_ticks": ctx.beat_idle_ticks,
            "database_vendor": connection.vendor,
            "broker_scheme": options.broker.split("://", 1)[0],
        },  # fmt: skip
        "machine": machine(),
        "versions": versions(ctx),
    }


def _shown_argv() -> list[str]:
    """The command line without credentials in URLs."""
    import re

    return [re.sub(r"//[^/@]*@", "//", arg) for arg in sys.argv[1:]]


def finish_report(report: dict[str, Any]) -> None:
    report["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat()
    report["machine"]["load_after"] = list(os.getloadavg())


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict[str, Any]:
    cpu_model, memory_gb = platform.processor() or platform.machine(), 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "platform": platform.platform(), "cpu_model": cpu_model, "cpus": os.cpu_count(),
        "memory_gb": memory_gb, "python": platform.python_version(),
        "load_before": list(os.getloadavg()),
    }  # fmt: skip


def versions(ctx: Any) -> dict[str, str]:
    found = {"Python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    found.update(server_versions(ctx))
    return found


def server_versions(ctx: Any) -> dict[str, str]:
    from django.db import connection

    found = {}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            found["PostgreSQL"] = cursor.fetchone()[0].split()[0]
    elif connection.vendor == "sqlite":
        import sqlite3

        found["SQLite"] = sqlite3.sqlite_version
    try:
        with ctx.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            client = getattr(conn.default_channel, "client", None)
            if client is not None and hasattr(client, "info"):
                found["Redis"] = client.info("server")["redis_version"]
            properties = getattr(conn.connection, "server_properties", None) or {}
            if properties.get("version"):
                found["RabbitMQ"] = str(properties["version"])
    except Exception:  # noqa: BLE001  # versions are informative only
        pass
    return found


def write_readme(report: dict[str, Any]) -> None:
    from bench.report import markdown_section, replace_section

    readme = REPO / "README.md"
    readme.write_text(replace_section(readme.read_text(), markdown_section(report)))
    print("README.md: Performance section rewritten")
