"""Django settings of the worker subprocesses of the job-run tests; it holds no tests.

``tests.settings`` plus the job-run settings read from the environment, so a test can
start a worker with ``env={"DJANGO_SETTINGS_MODULE": "tests.test_runs_settings", ...}``.
"""

import os

from tests.settings import *  # noqa: F403

DJCELERY_OPS_RUNS_FLUSH_INTERVAL = float(os.environ.get("DJCELERY_OPS_RUNS_FLUSH_INTERVAL", "0.2"))
DJCELERY_OPS_RUNS_BATCH_SIZE = int(os.environ.get("DJCELERY_OPS_RUNS_BATCH_SIZE", "500"))
DJCELERY_OPS_RUNS_ALL_TASKS = os.environ.get("DJCELERY_OPS_RUNS_ALL_TASKS") == "1"
DJCELERY_OPS_RUNS_STORE_ARGS = os.environ.get("DJCELERY_OPS_RUNS_STORE_ARGS") == "1"
