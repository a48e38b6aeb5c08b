"""Settings of the example project.

Everything comes from environment variables with embedded defaults: with nothing set, the
project runs on SQLite and kombu's file-system broker, so it needs no service at all.
``DATABASE_URL`` (e.g. ``postgres://127.0.0.1/postgres``) and ``CELERY_BROKER_URL``
(``redis://127.0.0.1:6379/0``, ``amqp://guest:guest@127.0.0.1:5672//``) switch to real services.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("EXAMPLE_VAR_DIR", BASE_DIR / "var" / "example"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

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
    "example_project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the worker and beat share one file: wait for the lock instead of
    # failing, and let readers proceed while one process writes.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(BROKER_DIR / "control"),
    }
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TIMEZONE = TIME_ZONE
# django-celery-beat's DatabaseScheduler with a leader lease: safe to run beat twice.
CELERY_BEAT_SCHEDULER = "djcelery_ops.LockedDatabaseScheduler"

# Schedules as code, synced into django-celery-beat by `manage.py sync_celery_schedules`.
DJCELERY_OPS_SCHEDULES = [
    {
        "name": "shop: nightly report",
        "task": "example_project.shop.tasks.nightly_report",
        "crontab": "0 2 * * *",
        "description": "Yesterday's charged payments",
    },
]
CELERY_TASK_TRACK_STARTED = True

DJCELERY_OPS_DEAD_LETTER_SPOOL_DIR = str(VAR_DIR / "spool")
# Encryption at rest of dead-letter payloads (needs djcelery-ops[crypto]): Fernet keys from
# the environment, comma-separated, newest first. Unset: payloads are stored in clear.
DJCELERY_OPS_ENCRYPTION_KEYS = [
    key for key in os.environ.get("DJCELERY_OPS_ENCRYPTION_KEYS", "").split(",") if key
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"djcelery_ops": {"handlers": ["console"], "level": "INFO"}},
}
