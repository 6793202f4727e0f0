"""Settings of the test project: the test database and worker schema come from the
environment (tests/test_django.py sets them before Django starts)."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

DATABASE_URL = os.environ["PGWORKER_DJANGO_DATABASE_URL"]
SCHEMA = os.environ["PGWORKER_DJANGO_SCHEMA"]
_db = conninfo_to_dict(DATABASE_URL)

SECRET_KEY = "pgworker-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "django_project.urls"
INSTALLED_APPS = ["pgworker.contrib.django"]
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}

_BACKEND = "pgworker.contrib.django.PgWorkerBackend"
_QUEUES = ["default", "emails"]

TASKS = {
    # Jobs go in through Django's connection, in its transaction; results are stored.
    "default": {
        "BACKEND": _BACKEND,
        "QUEUES": _QUEUES,
        "OPTIONS": {"SCHEMA": SCHEMA, "MAX_ATTEMPTS": 3, "RESULTS_TTL": 3600},
    },
    # One attempt only: a failure is final at once.
    "no_retries": {
        "BACKEND": _BACKEND,
        "QUEUES": _QUEUES,
        "OPTIONS": {"SCHEMA": SCHEMA, "MAX_ATTEMPTS": 1},
    },
    # The queue named by URL: no shared transaction, the job is added on commit.
    "on_commit": {
        "BACKEND": _BACKEND,
        "QUEUES": _QUEUES,
        "OPTIONS": {"SCHEMA": SCHEMA, "DATABASE_URL": DATABASE_URL},
    },
    # No results store: what the jobs table alone tells.
    "no_results": {
        "BACKEND": _BACKEND,
        "QUEUES": _QUEUES,
        "OPTIONS": {"SCHEMA": SCHEMA, "MAX_ATTEMPTS": 3, "RESULTS": False},
    },
}
