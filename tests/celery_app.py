"""The Celery app of the test suite; worker subprocesses run ``celery -A tests.celery_app``."""

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect(dispatch_uid="tests.celery_app.announce_ready")
def announce_ready(**kwargs):
    """Tell the test that started this worker that it consumes now (no sleep needed)."""
    ready_file = os.environ.get("DJCELERY_OPS_TEST_READY_FILE")
    if ready_file:
        Path(ready_file).write_text(str(os.getpid()))
