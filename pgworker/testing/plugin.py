"""The pytest plugin: fixtures for testing the tasks of a pgworker App.

Installed with pgworker (entry point ``pytest11``), it only adds fixtures, all named
``pgworker_*``, one ini option (``pgworker_app``) and one command-line option
(``--pgworker-database-url``): a test that uses none of its fixtures is untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import click
import pytest

from ..app import App
from ..embedded import configured_database_url, embedded_allowed, no_database_error, start_embedded
from .assertions import assert_deferred, assert_not_deferred, deferred_jobs
from .eager import eager_mode
from .records import DeferredJob
from .run import MAX_ROUNDS, RunResult, run_jobs

#: The ini option naming the App under test, as ``module:attribute``.
APP_INI_OPTION = "pgworker_app"
#: The environment variable naming the test database (as in pgworker's own tests).
DATABASE_VARIABLE = "PGWORKER_TEST_DATABASE_URL"
#: The App attributes ``pgworker_app`` changes for a test and restores afterwards.
MOVED_ATTRIBUTES = (
    "database_url",
    "schema",
    "_schema_given",
    "store",
    "_own_pool",
    "_pool",
    "enqueue_schema",
    "_definer",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--pgworker-database-url`` and the ``pgworker_app`` ini option."""
    group = parser.getgroup("pgworker", "pgworker job queue")
    group.addoption(
        "--pgworker-database-url",
        dest="pgworker_database_url",
        default=None,
        help=f"the database pgworker fixtures use (default: ${DATABASE_VARIABLE}, then "
        "DATABASE_URL, libpq's PG* variables, else an embedded PostgreSQL)",
    )
    parser.addini(
        APP_INI_OPTION,
        help="the App whose tasks the pgworker fixtures test, as module:attribute",
        default="",
    )


class PgWorkerJobs:
    """The ``pgworker_jobs`` fixture: the helpers of ``pgworker.testing``, bound to the
    app of the ``pgworker_app`` fixture."""

    def __init__(self, app: App) -> None:
        self.app = app

    def run(self, *, max_rounds: int = MAX_ROUNDS, raise_on_failure: bool = True) -> RunResult:
        """Run every due job and the jobs they defer: ``run_jobs(app)``."""
        return run_jobs(self.app, max_rounds=max_rounds, raise_on_failure=raise_on_failure)

    def deferred(self, task: str | None = None, **filters: Any) -> list[DeferredJob]:
        """The deferred jobs matching the filters: ``deferred_jobs(app, ...)``."""
        return deferred_jobs(self.app, task, **filters)

    def assert_deferred(self, task: str, **filters: Any) -> list[DeferredJob]:
        """Assert a matching job was deferred: ``assert_deferred(app, ...)``."""
        return assert_deferred(self.app, task, **filters)

    def assert_not_deferred(self, task: str | None = None, **filters: Any) -> None:
        """Assert no matching job was deferred: ``assert_not_deferred(app, ...)``."""
        assert_not_deferred(self.app, task, **filters)


@pytest.fixture(scope="session")
def pgworker_database_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The database pgworker's fixtures use: ``--pgworker-database-url``, else
    ``$PGWORKER_TEST_DATABASE_URL``, else the database rule (``DATABASE_URL``, libpq's
    ``PG*`` variables, else the embedded PostgreSQL, started once for the session).
    Each test gets a schema of its own in it, so it may be a shared database."""
    option = pytestconfig.getoption("pgworker_database_url", None)
    url = option or os.environ.get(DATABASE_VARIABLE) or configured_database_url()
    if url is not None:
        yield url
        return
    if not embedded_allowed():
        raise no_database_error()
    server = start_embedded()
    try:
        yield server.url
    finally:
        server.release()


@pytest.fixture
def pgworker_base_app(pytestconfig: pytest.Config) -> App:
    """The App under test, as your code builds it: the one the ``pgworker_app`` ini
    option names (``pgworker_app = "myproject.tasks:app"``). Override this fixture to
    give it another way."""
    target = str(pytestconfig.getini(APP_INI_OPTION) or "").strip()
    if not target:
        raise pytest.UsageError(
            f'name your App in the ini option {APP_INI_OPTION} (pgworker_app = "myproject.'
            'tasks:app" under [tool.pytest.ini_options]), or override the pgworker_base_app '
            "fixture"
        )
    from ..cli_common import load_app

    try:
        return load_app(target)
    except click.ClickException as exc:
        raise pytest.UsageError(f"{APP_INI_OPTION} = {target!r}: {exc.format_message()}") from exc


@pytest.fixture
def pgworker_app(pgworker_base_app: App, pgworker_database_url: str) -> Iterator[App]:
    """The App under test, moved for the length of the test onto a fresh worker schema
    of its own in the test database, migrated and open; afterwards it is closed, its
    settings restored and the schema dropped. Tasks deferred through it (``task.defer``)
    land there, and ``run_jobs`` runs them. An ``enqueue_schema`` is set aside for the
    test: jobs are added directly."""
    app = pgworker_base_app
    if app.is_open:
        raise pytest.UsageError(
            "the App under test is already open: the pgworker_app fixture opens it on a "
            "schema of its own (don't open it at import time)"
        )
    saved = {name: getattr(app, name) for name in MOVED_ATTRIBUTES if hasattr(app, name)}
    app.configure(database_url=pgworker_database_url, schema=f"pgw_test_{secrets.token_hex(5)}")
    app._own_pool, app._pool = True, None  # a pool of its own, even if it was given one
    # Jobs go straight into the test's schema: no enqueue functions are installed there.
    app.enqueue_schema = None
    try:
        app.open()
        app.migrate()
        yield app
    finally:
        try:
            if app.is_open:
                app.store.drop_schema()
        finally:
            app.close()
            for name, value in saved.items():
                setattr(app, name, value)


@pytest.fixture
def pgworker_jobs(pgworker_app: App) -> PgWorkerJobs:
    """Run and inspect the jobs of ``pgworker_app``: ``pgworker_jobs.run()``,
    ``.deferred(...)``, ``.assert_deferred(...)``, ``.assert_not_deferred(...)``."""
    return PgWorkerJobs(pgworker_app)


@pytest.fixture
def pgworker_eager(pgworker_base_app: App) -> Iterator[App]:
    """The App under test in eager mode (``app.eager()``): every ``defer`` runs its task
    inline, no database needed. ``deferred_jobs`` and ``assert_deferred`` see the jobs."""
    with eager_mode(pgworker_base_app):
        yield pgworker_base_app
