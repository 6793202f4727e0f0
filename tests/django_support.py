"""Shared by the Django tests: Django set up once per test session with
tests/django_project on the test database, a worker schema of its own, and helpers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgworker import App

WORKER_OPTIONS: dict[str, Any] = {
    "concurrency": 1,
    "poll_interval": 0.2,
    "shutdown_grace_period": 5.0,
}


@pytest.fixture(scope="session")
def django_schema(database_url: str) -> Iterator[str]:
    """Django set up with tests/django_project on the test database and a worker schema of
    this module's own (installed with its results table), dropped afterwards."""
    schema = f"pgw_django_{secrets.token_hex(4)}"
    os.environ["PGWORKER_DJANGO_DATABASE_URL"] = database_url
    os.environ["PGWORKER_DJANGO_SCHEMA"] = schema
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
    import django
    from django.conf import settings

    if settings.configured and settings.TASKS["default"]["OPTIONS"]["SCHEMA"] != schema:
        pytest.skip("Django was set up for another schema in this process")
    django.setup()
    from pgworker.contrib.django.worker import build_worker_app, prepare

    with build_worker_app("default", **WORKER_OPTIONS) as app:
        prepare(app)
    yield schema
    from django.db import connections

    connections.close_all()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{schema}" cascade')
        conn.execute(f'drop schema if exists "{schema}_results" cascade')


@pytest.fixture
def project(django_schema: str, db: psycopg.Connection[tuple[Any, ...]]) -> str:
    """A clean queue and results table for each test; the schema's name."""
    from django_project import tasks

    db.execute(f'delete from "{django_schema}"._private_jobs')
    db.execute(f'delete from "{django_schema}_results".django_task_results')
    tasks.RUNS.clear()
    return django_schema


def run_worker(alias: str = "default", queues: list[str] | None = None) -> str:
    """Run every runnable Django job with a worker of ``alias`` serving ``queues``;
    return the worker's id."""
    from pgworker.contrib.django.worker import build_worker_app

    worker_id = f"django-test-{secrets.token_hex(4)}"
    app: App = build_worker_app(alias, queues, worker_id=worker_id, **WORKER_OPTIONS)
    with app:
        app.run_once(install_signal_handlers=False)
    return worker_id


def job_row(db: psycopg.Connection[tuple[Any, ...]], schema: str, result_id: str) -> Any:
    """(task identifier, queue_name, priority, run_at, attempts, locked_by) of a result's
    job, or None."""
    return db.execute(
        f"""select tasks.identifier, jobs.job_queue_id, jobs.priority, jobs.run_at,
                   jobs.attempts, jobs.locked_by
            from "{schema}"._private_jobs as jobs
            join "{schema}"._private_tasks as tasks on tasks.id = jobs.task_id
            where jobs.key = %s""",
        (f"django:{result_id}",),
    ).fetchone()


def make_runnable(db: psycopg.Connection[tuple[Any, ...]], schema: str, result_id: str) -> None:
    """Bring a waiting job's run_at (a retry's backoff, a run_after) to now."""
    db.execute(
        f'update "{schema}"._private_jobs set run_at = now() where key = %s',
        (f"django:{result_id}",),
    )
