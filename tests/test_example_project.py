"""The example project installs its tables and passes Django's checks on the defaults."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.worker import REPO_ROOT


def test_example_project__migrates_and_checks_on_sqlite_and_file_broker(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")
    }
    env["EXAMPLE_VAR_DIR"] = str(tmp_path)
    for command in (["migrate", "--no-input", "-v", "0"], ["check", "--fail-level", "WARNING"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "db.sqlite3").exists()
