"""What every measure is given: the apps, the sizes, and how to prepare the database."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

FULL = {"tasks": 3000, "replay_count": 100_000, "beat_tasks": 10_000, "beat_due": 300,
        "beat_idle_ticks": 200, "timeout": 900.0}  # fmt: skip
SMOKE = {"tasks": 30, "replay_count": 200, "beat_tasks": 200, "beat_due": 10,
         "beat_idle_ticks": 10, "timeout": 120.0}  # fmt: skip


@dataclass
class Context:
    app: Any
    beat_app: Any
    concurrency: int
    tasks: int
    replay_count: int
    beat_tasks: int
    beat_due: int
    beat_idle_ticks: int
    timeout: float


def configure(broker: str, database: str) -> None:
    """Point the test settings (and every worker subprocess) at the given services."""
    os.environ["DATABASE_URL"] = database
    os.environ["CELERY_BROKER_URL"] = broker
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ.pop("DJCELERY_OPS_TEST_DB_NAME", None)


def check_database_name(database: str) -> None:
    """The bench empties tables and migrates: refuse a database not named for it."""
    import dj_database_url

    name = str(dj_database_url.parse(database)["NAME"] or "")
    if "bench" not in name.rsplit("/", 1)[-1]:
        raise SystemExit(
            f"refusing database {name!r}: the bench migrates it and deletes rows in it; "
            "give one whose name contains 'bench' (created if missing)"
        )


def ensure_postgres_database(database: str) -> None:
    import dj_database_url
    import psycopg

    config = dj_database_url.parse(database)
    maintenance = psycopg.connect(
        host=config["HOST"] or "127.0.0.1", port=config["PORT"] or 5432, user=config["USER"],
        password=config["PASSWORD"] or None, dbname="postgres", autocommit=True,
    )  # fmt: skip
    with maintenance:
        exists = maintenance.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]
        ).fetchone()
        if not exists:
            maintenance.execute(f'CREATE DATABASE "{config["NAME"]}"')


def setup(database: str, concurrency: int, smoke: bool) -> Context:
    if database.startswith("postgres"):
        ensure_postgres_database(database)
    import django

    django.setup()
    from celery import Celery
    from django.core.management import call_command

    from bench.worker_app import app

    call_command("migrate", verbosity=0)
    # The test settings log djcelery_ops events at INFO; the scheduler logs every dispatch.
    logging.getLogger("djcelery_ops").setLevel(logging.WARNING)
    beat_app = Celery("bench-beat")
    beat_app.config_from_object("django.conf:settings", namespace="CELERY")
    beat_app.conf.update(broker_url="memory://")  # only the scheduler is measured
    return Context(app=app, beat_app=beat_app, concurrency=concurrency,
                   **(SMOKE if smoke else FULL))  # type: ignore[arg-type]  # fmt: skip
