"""Database: opening the app's connection pool, and naming a database (and pgworker's
version) in messages."""

from __future__ import annotations

from importlib import metadata

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .errors import ConfigurationError, DatabaseUnavailableError
from .store import Connection

#: Seconds to wait for the database when opening.
CONNECT_TIMEOUT = 10.0


def open_pool(
    conninfo: str, *, max_size: int, timeout: float, name: str
) -> ConnectionPool[Connection]:
    """Check that the database answers, then open an autocommit pool on it, whose users
    wait at most ``timeout`` seconds for a connection. Raises
    ConfigurationError for a malformed URL, DatabaseUnavailableError (with libpq's
    reason) when the database can't be reached."""
    try:
        psycopg.connect(conninfo, connect_timeout=int(CONNECT_TIMEOUT)).close()
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid database URL: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to the database ({describe(conninfo)}): "
            f"{str(exc).strip() or type(exc).__name__}"
        ) from exc
    pool: ConnectionPool[Connection] = ConnectionPool(
        conninfo,
        min_size=min(2, max_size),
        max_size=max_size,
        kwargs={"autocommit": True},
        open=False,
        name=name,
        timeout=timeout,
    )
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    except PoolTimeout as exc:
        pool.close()
        raise DatabaseUnavailableError(f"cannot open a connection pool: {exc}") from exc
    return pool


def describe(conninfo: str) -> str:
    """Name the database without leaking a password."""
    if not conninfo:
        return "libpq defaults from the PG* environment variables"
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "an unparsable connection string"
    host = params.get("host") or "localhost"
    return f"host={host} port={params.get('port') or 5432} dbname={params.get('dbname') or '?'}"


def package_version() -> str:
    """The installed pgworker's version ("unknown" when run from a bare source tree)."""
    try:
        return metadata.version("pgworker-queue")
    except metadata.PackageNotFoundError:
        return "unknown"
