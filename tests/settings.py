"""Settings of the test suite.

``DATABASE_URL`` selects the database (SQLite in ``var/tests`` when unset) and
``CELERY_BROKER_URL`` the broker (kombu's file-system transport when unset). A worker
subprocess started by the suite gets ``DJCELERY_OPS_TEST_DB_NAME`` so it connects to the
test database pytest-django created, and ``DJCELERY_OPS_TEST_QUEUE`` for its queue.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DJCELERY_OPS_TEST_VAR", BASE_DIR / "var" / "tests"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_celery_results",
    "djcelery_ops",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not ":memory:", so that worker subprocesses share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
if os.environ.get("DJCELERY_OPS_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DJCELERY_OPS_TEST_DB_NAME"]

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    BROKER_DIR = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(BROKER_DIR / "control"),
        "polling_interval": 0.1,
    }
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DJCELERY_OPS_TEST_QUEUE", "djops-tests")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = os.environ.get(
    "DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR", str(VAR_DIR / "spool")
)
# Encryption at rest: worker subprocesses get the test's keys from their environment.
if os.environ.get("DJCELERY_OPS_TEST_ENCRYPTION_KEYS"):
    DJCELERY_OPS_ENCRYPTION_KEYS = os.environ["DJCELERY_OPS_TEST_ENCRYPTION_KEYS"].split(",")
DJCELERY_OPS_DEAD_LETTER_MAX_DELIVERIES = int(
    os.environ.get("DJCELERY_OPS_DEAD_LETTER_MAX_DELIVERIES", "5")
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "djcelery_ops.logs.JsonFormatter"}},
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {"djcelery_ops": {"handlers": ["json"], "level": "INFO", "propagate": False}},
}

# --- Idempotency tests: worker subprocesses read these from their environment -------------
if os.environ.get("DJCELERY_OPS_TEST_VISIBILITY_TIMEOUT") and CELERY_BROKER_URL.startswith("redis"):
    # A short visibility timeout, and restore sweeps every second, so that a long task's
    # message is redelivered while the task still runs.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": float(os.environ["DJCELERY_OPS_TEST_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS"):
    DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS = float(
        os.environ["DJCELERY_OPS_IDEMPOTENCY_LEASE_MARGIN_SECONDS"]
    )
# W005 (a new database connection per task) is what the suite wants: every task starts on
# a fresh connection, so a test that cuts the database sees the next task reconnect.
SILENCED_SYSTEM_CHECKS = ["djcelery_ops.W005"]
if os.environ.get("DJCELERY_OPS_TEST_DB_REUSE_MAX"):
    # Celery's Django fixup closes the connection around every task unless this is set.
    CELERY_DB_REUSE_MAX = int(os.environ["DJCELERY_OPS_TEST_DB_REUSE_MAX"])
if os.environ.get("DJCELERY_OPS_DEAD_LETTER_REPLAY_RECOVER_AFTER"):
    # Replay chaos tests: a killed command's claims are recovered by the very next run.
    DJCELERY_OPS_DEAD_LETTER_REPLAY_RECOVER_AFTER = float(
        os.environ["DJCELERY_OPS_DEAD_LETTER_REPLAY_RECOVER_AFTER"]
    )

# --- Dead-letter reliability tests -----------------------------------------------------------
# Bulk actions (tests/test_bulk_actions_worker.py): batches and slices of the worker.
if os.environ.get("DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE"):
    DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE = int(
        os.environ["DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE"]
    )
if os.environ.get("DJCELERY_OPS_DEAD_LETTER_BULK_SLICE_SECONDS"):
    DJCELERY_OPS_DEAD_LETTER_BULK_SLICE_SECONDS = float(
        os.environ["DJCELERY_OPS_DEAD_LETTER_BULK_SLICE_SECONDS"]
    )
if os.environ.get("DJCELERY_OPS_TEST_RESULT_BACKEND"):
    # "django-db" (django-celery-results, as in the example project): the trace stores the
    # result in the database before on_failure runs.
    CELERY_RESULT_BACKEND = os.environ["DJCELERY_OPS_TEST_RESULT_BACKEND"]
if os.environ.get("DJCELERY_OPS_TEST_WORKER_CONSUMER"):
    CELERY_WORKER_CONSUMER = os.environ["DJCELERY_OPS_TEST_WORKER_CONSUMER"]
if os.environ.get("DJCELERY_OPS_IDEMPOTENCY_MAX_WAIT_SECONDS"):
    DJCELERY_OPS_IDEMPOTENCY_MAX_WAIT_SECONDS = float(
        os.environ["DJCELERY_OPS_IDEMPOTENCY_MAX_WAIT_SECONDS"]
    )

# --- Beat reliability tests: a short leader lease for beat subprocesses ---------------------
if os.environ.get("DJCELERY_OPS_TEST_BEAT_LEASE_SECONDS"):
    DJCELERY_OPS_BEAT_LEASE_SECONDS = float(os.environ["DJCELERY_OPS_TEST_BEAT_LEASE_SECONDS"])
# --- Faithful replay tests -------------------------------------------------------------------
if os.environ.get("DJCELERY_OPS_TEST_ACCEPT_CONTENT"):
    # "json,pickle": a worker that accepts pickle (the default accepts JSON only).
    CELERY_ACCEPT_CONTENT = os.environ["DJCELERY_OPS_TEST_ACCEPT_CONTENT"].split(",")
if os.environ.get("DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL"):
    DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL = float(
        os.environ["DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL"]
    )
