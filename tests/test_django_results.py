"""pgworker.contrib.django's results store: off, expiry, and its table's creation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

pytest.importorskip("django")
pytest.register_assert_rewrite("django_support")
from django_support import make_runnable, run_worker  # noqa: E402

pytest_plugins = ["django_support"]  # the Django fixtures, set up once per session


def test_without_the_results_store_get_result_knows_only_the_job(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    from pgworker.contrib.django.compat import TaskResultDoesNotExist
    from pgworker.contrib.django.state import JobError

    result = tasks.flaky.using(backend="no_results").enqueue("x")
    run_worker("no_results")
    result.refresh()
    assert result.status == "READY"
    assert result.attempts == 1
    assert result.errors[0].exception_class is JobError
    assert "PaymentDeclinedError: declined on attempt 1" in result.errors[0].traceback

    make_runnable(db, project, result.id)
    run_worker("no_results")
    assert tasks.RUNS == []
    with pytest.raises(TaskResultDoesNotExist):
        result.refresh()  # done and deleted; nothing was stored
    stored = db.execute(f'select count(*) from "{project}_results".django_task_results')
    assert stored.fetchone() == (0,)


def test_expired_results_are_forgotten_and_deleted(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.db import connection
    from django_project import tasks

    from pgworker.contrib.django.compat import TaskResultDoesNotExist
    from pgworker.contrib.django.results import ResultsStore

    result = tasks.add.enqueue(1, 2)
    run_worker()
    table = f'"{project}_results".django_task_results'
    expires = db.execute(f"select expires_at - finished_at from {table}").fetchone()[0]
    assert expires == timedelta(hours=1)  # RESULTS_TTL of the test project
    db.execute(f"update {table} set expires_at = now() - interval '1 second'")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(result.id)
    store = ResultsStore(project, f"{project}_results", ttl=60)
    connection.ensure_connection()
    assert store.expire_due(connection.connection) == 1
    assert db.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_a_worker_creates_the_results_table_when_it_starts(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    db.execute(f'drop schema "{project}_results" cascade')
    result = tasks.add.enqueue(2, 2)
    run_worker()  # no prepare(): the worker's start creates the table
    assert tasks.add.get_result(result.id).return_value == 4
