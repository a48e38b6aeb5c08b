"""``djcelery_ops.JsonFormatter`` on python-json-logger: the README's LOGGING pasted as is,
the running task's context on every line, redaction, and the error without the extra."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from djcelery_ops import JsonFormatter, ops_task
from djcelery_ops.redact import REDACTED
from tests.test_newcomer import ROOT, python_block_after

# The README's LOGGING, then an OpsTask of "proj" whose body logs, run eagerly.
README_TASK_PROBE = """
import logging, logging.config, sys
import django
django.setup()
namespace = {}
exec(sys.stdin.read(), namespace)
logging.config.dictConfig(namespace["LOGGING"])
from djcelery_ops import ops_task

@ops_task(name="proj.tasks.charge")
def charge(order_id):
    logging.getLogger("proj.tasks").info("charging order %s", order_id)

charge.apply(("o-7",), task_id="t-json-1")
"""

MISSING_EXTRA_PROBE = """
import logging.config, sys
sys.modules["pythonjsonlogger"] = None  # python-json-logger not installed
namespace = {}
exec(sys.stdin.read(), namespace)
logging.config.dictConfig(namespace["LOGGING"])
"""


def run_probe(probe: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    return subprocess.run(
        [sys.executable, "-c", probe],
        input=python_block_after("logging-block"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_readme_logging__a_line_logged_in_a_task_is_json_with_the_task_context():
    result = run_probe(README_TASK_PROBE)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    [mine] = [line for line in lines if line["logger"] == "proj.tasks"]
    assert mine["message"] == "charging order o-7" and mine["level"] == "INFO"
    assert mine["task_id"] == "t-json-1" and mine["task_name"] == "proj.tasks.charge"
    assert (mine["root_id"], mine["retries"]) == ("t-json-1", 0)  # a root task is its own root
    assert mine["time"].endswith("+00:00")
    [event] = [line for line in lines if line.get("event") == "task.succeeded"]
    assert event["logger"] == "djcelery_ops.task" and event["task_id"] == "t-json-1"
    assert event["root_id"] == "t-json-1"


def test_readme_logging__without_python_json_logger_fails_at_configuration_saying_why():
    result = run_probe(MISSING_EXTRA_PROBE)
    assert result.returncode != 0
    assert "Unable to configure formatter 'json'" in result.stderr
    assert "pip install 'djcelery-ops[jsonlogs]'" in result.stderr


def test_json_formatter__extra_fields_are_redacted_and_no_task_means_no_task_fields():
    logger = logging.getLogger("tests.json")
    record = logger.makeRecord(
        "tests.json", logging.WARNING, __file__, 1, "login for %s", ("bob",), None,
        extra={"password": "hunter2", "attempt": 3},
    )  # fmt: skip
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "login for bob" and data["level"] == "WARNING"
    assert data["password"] == REDACTED and data["attempt"] == 3
    assert "task_id" not in data and "hunter2" not in json.dumps(data)


@ops_task(name="tests.json.format_inside")
def format_inside() -> dict:
    record = logging.LogRecord("proj.tasks", logging.INFO, __file__, 1, "inside", (), None)
    return json.loads(JsonFormatter().format(record))


def test_json_formatter__inside_a_task_body_adds_its_context():
    data = format_inside.apply(task_id="t-inside").get()
    assert data["task_id"] == "t-inside" and data["task_name"] == "tests.json.format_inside"
    assert data["retries"] == 0
