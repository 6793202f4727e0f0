"""Installs the graphile-worker schema, or accepts and upgrades one that Node or Rust made."""

from __future__ import annotations

import enum
import logging

import psycopg
from psycopg_pool import ConnectionPool

from .errors import DatabaseUnavailableError, IncompatibleSchemaError, MigrationError
from .store_base import Connection
from .store_migrate import MigrationStatements

logger = logging.getLogger(__name__)

#: The schema revision pgworker installs: Node graphile-worker 0.17's 19, plus the Rust
#: port's 20 (its worker registry, which pgworker's heartbeats and sweeper use).
SCHEMA_REVISION = 20
#: The revision that adds the worker registry (``workers.sql``); not breaking.
WORKERS_REVISION = 20
#: Revisions that graphile-worker marks as breaking: a worker that knows only an older
#: revision must refuse a database that has one of these.
BREAKING_REVISIONS = frozenset({1, 3, 11, 13, 14, 16, 19})
#: The newest revision pgworker knows.
NEWEST_KNOWN_REVISION = SCHEMA_REVISION
#: The oldest ledger pgworker takes over; older databases go through graphile-worker first.
OLDEST_ACCEPTED_REVISION = 18
MIN_SERVER_VERSION = 120000
#: Present in add_jobs once the fix for graphile/worker#580 is installed (ours or Rust's).
RACE_FIX_MARKER = "pg_advisory_xact_lock"
#: Present in add_jobs when the current version of functions.sql is installed.
FUNCTIONS_MARKER = "pgworker:functions:2"


class MigrationOutcome(enum.Enum):
    """What ``migrate`` did."""

    INSTALLED = "installed"
    UPGRADED = "upgraded"
    CURRENT = "current"


def migrate_pool(pool: ConnectionPool[Connection], schema: str) -> MigrationOutcome:
    """``migrate`` on a connection from ``pool``, with the driver's errors turned into
    pgworker's: DatabaseUnavailableError, or MigrationError saying what went wrong."""
    try:
        with pool.connection() as conn:
            return migrate(conn, schema)
    except MigrationError:
        raise
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"the database is unreachable: {exc}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(
            f"migrating schema {schema!r} needs more privileges "
            f"({exc.diag.message_primary}): run it as the role that owns the schema"
        ) from exc
    except psycopg.Error as exc:
        raise MigrationError(f"migrating schema {schema!r} failed: {exc}") from exc


def migrate(conn: Connection, schema: str) -> MigrationOutcome:
    """Install or upgrade the worker schema in one transaction on ``conn``.

    Safe to run from many processes at once: pgworker processes queue on an advisory
    lock, and a Node worker racing us hits the migrations ledger's primary key.
    """
    store = MigrationStatements(None, schema)
    version = store.server_version(conn)
    if version < MIN_SERVER_VERSION:
        raise MigrationError(f"pgworker needs PostgreSQL 12 or newer; this server is {version}")
    with conn.transaction():
        store.take_migration_lock(conn)
        has_ledger, has_breaking_column = store.ledger_exists(conn)
        if not has_ledger:
            _install(conn, store)
            return MigrationOutcome.INSTALLED
        if not has_breaking_column:
            raise MigrationError(
                f"schema {schema!r} has a migrations table from graphile-worker older than 0.11; "
                "upgrade it with graphile-worker 0.17 first (npx graphile-worker --schema-only)"
            )
        return _upgrade(conn, store)


def _install(conn: Connection, store: MigrationStatements) -> None:
    for filename in ("schema.sql", "functions.sql", "workers.sql"):
        store.run_sql_file(conn, filename)
    revisions = range(1, SCHEMA_REVISION + 1)
    store.record_migrations(conn, {r: r in BREAKING_REVISIONS for r in revisions})
    logger.info("Installed the worker schema %r at revision %d", store.schema, SCHEMA_REVISION)


def _upgrade(conn: Connection, store: MigrationStatements) -> MigrationOutcome:
    schema = store.schema
    latest, latest_breaking = store.ledger_revisions(conn)
    if latest_breaking > SCHEMA_REVISION:
        raise IncompatibleSchemaError(
            f"the database's worker schema {schema!r} is at revision {latest}, with breaking "
            f"revision {latest_breaking}, but this pgworker understands revisions up to "
            f"{SCHEMA_REVISION}; running it would be unsafe. Upgrade pgworker, or use a "
            "database that no newer worker has migrated."
        )
    if latest == 0:
        raise MigrationError(
            f"the worker schema {schema!r} has an empty migrations table: another worker "
            "(Node or Rust) is probably installing it right now; try again in a moment"
        )
    if latest < OLDEST_ACCEPTED_REVISION:
        raise MigrationError(
            f"the worker schema {schema!r} is at revision {latest}, older than graphile-worker "
            f"0.16 (revision {OLDEST_ACCEPTED_REVISION}); upgrade it with graphile-worker 0.17 "
            "first (npx graphile-worker@0.17 --schema-only), then start pgworker"
        )
    if latest > NEWEST_KNOWN_REVISION:
        logger.warning(
            "The worker schema %r is at revision %d, newer than pgworker knows (%d); "
            "none of the newer revisions is breaking, so pgworker carries on",
            schema,
            latest,
            NEWEST_KNOWN_REVISION,
        )
    outcome = MigrationOutcome.CURRENT
    if latest == OLDEST_ACCEPTED_REVISION:
        # Revision 19 changes no SQL: it marks the switch to one lock owner per pool, so
        # that graphile-worker 0.16 workers (one owner per job slot) refuse to start.
        store.record_migrations(conn, {19: True})
        store.notify_migration(conn, 19, breaking=True)
        outcome = MigrationOutcome.UPGRADED
    if latest < WORKERS_REVISION:
        # Node graphile-worker 0.17 reads a newer non-breaking revision as a warning and
        # carries on, as it does on a database the Rust port migrated.
        store.run_sql_file(conn, "workers.sql")
        store.record_migrations(conn, {WORKERS_REVISION: False})
        logger.info("Added the worker registry (revision %d) to %r", WORKERS_REVISION, schema)
        outcome = MigrationOutcome.UPGRADED
    source = store.add_jobs_definition(conn)
    # Our functions replace graphile-worker's (same signatures and semantics, plus the
    # #580 fix) on every revision we know; past those, only when the fix is missing.
    outdated = FUNCTIONS_MARKER not in source and (
        latest <= NEWEST_KNOWN_REVISION or RACE_FIX_MARKER not in source
    )
    if outdated:
        store.run_sql_file(conn, "functions.sql")
        logger.info(
            "Installed pgworker's SQL functions (with the keyed-add race fix) in %r", schema
        )
        outcome = MigrationOutcome.UPGRADED
    return outcome
