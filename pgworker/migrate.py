"""Installs the graphile-worker schema, or accepts and upgrades one that Node or Rust made."""

from __future__ import annotations

import enum
import json
import logging

from .errors import IncompatibleSchemaError, MigrationError
from .queries import Queries, bind_schema, read_sql_file
from .store import Connection

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


def migrate(conn: Connection, schema: str) -> MigrationOutcome:
    """Install or upgrade the worker schema in one transaction on ``conn``.

    Safe to run from many processes at once: pgworker processes queue on an advisory
    lock, and a Node worker racing us hits the migrations ledger's primary key.
    """
    queries = Queries(schema)
    version = _fetch_value(conn, queries["server_version"])
    if not isinstance(version, int) or version < MIN_SERVER_VERSION:
        raise MigrationError(f"pgworker needs PostgreSQL 12 or newer; this server is {version}")
    with conn.transaction():
        conn.execute(queries["take_migration_lock"], {"schema": schema})
        row = conn.execute(queries["ledger_exists"], {"schema": schema}).fetchone()
        assert row is not None
        has_ledger, has_breaking_column = row
        if not has_ledger:
            _install(conn, queries, schema)
            return MigrationOutcome.INSTALLED
        if not has_breaking_column:
            raise MigrationError(
                f"schema {schema!r} has a migrations table from graphile-worker older than 0.11; "
                "upgrade it with graphile-worker 0.17 first (npx graphile-worker --schema-only)"
            )
        return _upgrade(conn, queries, schema)


def _install(conn: Connection, queries: Queries, schema: str) -> None:
    conn.execute(bind_schema(read_sql_file("schema.sql"), schema))
    conn.execute(bind_schema(read_sql_file("functions.sql"), schema))
    conn.execute(bind_schema(read_sql_file("workers.sql"), schema))
    revisions = list(range(1, SCHEMA_REVISION + 1))
    conn.execute(
        queries["record_migrations"],
        {"ids": revisions, "breaking": [r in BREAKING_REVISIONS for r in revisions]},
    )
    logger.info("Installed the worker schema %r at revision %d", schema, SCHEMA_REVISION)


def _upgrade(conn: Connection, queries: Queries, schema: str) -> MigrationOutcome:
    row = conn.execute(queries["ledger_state"]).fetchone()
    assert row is not None
    latest, latest_breaking = row
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
        conn.execute(queries["record_migrations"], {"ids": [19], "breaking": [True]})
        conn.execute(
            queries["notify_migration"],
            {"payload": json.dumps({"migrationNumber": 19, "breaking": True})},
        )
        outcome = MigrationOutcome.UPGRADED
    if latest < WORKERS_REVISION:
        # Node graphile-worker 0.17 reads a newer non-breaking revision as a warning and
        # carries on, as it does on a database the Rust port migrated.
        conn.execute(bind_schema(read_sql_file("workers.sql"), schema))
        conn.execute(queries["record_migrations"], {"ids": [WORKERS_REVISION], "breaking": [False]})
        logger.info("Added the worker registry (revision %d) to %r", WORKERS_REVISION, schema)
        outcome = MigrationOutcome.UPGRADED
    definition = _fetch_value(conn, queries["add_jobs_definition"], {"schema": schema})
    source = definition if isinstance(definition, str) else ""
    # Our functions replace graphile-worker's (same signatures and semantics, plus the
    # #580 fix) on every revision we know; past those, only when the fix is missing.
    outdated = FUNCTIONS_MARKER not in source and (
        latest <= NEWEST_KNOWN_REVISION or RACE_FIX_MARKER not in source
    )
    if outdated:
        conn.execute(bind_schema(read_sql_file("functions.sql"), schema))
        logger.info(
            "Installed pgworker's SQL functions (with the keyed-add race fix) in %r", schema
        )
        outcome = MigrationOutcome.UPGRADED
    return outcome


def _fetch_value(
    conn: Connection,
    query: bytes,
    params: dict[str, object] | None = None,
) -> object:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]
