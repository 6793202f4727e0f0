"""Database: opening the app's connection pool, and naming a database (and pgworker's
version) in messages."""

from __future__ import annotations

import re
from importlib import metadata
from urllib.parse import unquote

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .connections import DEFAULT_PREPARE_THRESHOLD
from .errors import ConfigurationError, DatabaseUnavailableError
from .store import Connection

#: Seconds to wait for the database when opening.
CONNECT_TIMEOUT = 10.0


#: Seconds psycopg_pool goes on retrying one failed connection before it gives up (the
#: next request for a connection then starts over, with no backoff to wait out).
RECONNECT_TIMEOUT = 3.0


def open_pool(
    conninfo: str,
    *,
    max_size: int,
    timeout: float,
    name: str,
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
) -> ConnectionPool[Connection]:
    """Check that the database answers, then open an autocommit pool on it, whose users
    wait at most ``timeout`` seconds for a connection (``prepare_threshold``: psycopg's,
    None never to prepare statements). Raises
    ConfigurationError for a malformed URL, DatabaseUnavailableError (with libpq's
    reason) when the database can't be reached."""
    try:
        psycopg.connect(conninfo, connect_timeout=int(CONNECT_TIMEOUT)).close()
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part of a malformed URL it choked on: the password, maybe.
        raise ConfigurationError(
            f"invalid database URL: {redact(str(exc).strip(), conninfo)}"
        ) from exc
    except psycopg.OperationalError as exc:
        reason = redact(str(exc).strip() or type(exc).__name__, conninfo)
        raise DatabaseUnavailableError(
            f"cannot connect to the database ({describe(conninfo)}): {reason}"
        ) from exc
    pool: ConnectionPool[Connection] = ConnectionPool(
        conninfo,
        min_size=min(2, max_size),
        max_size=max_size,
        kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
        open=False,
        name=name,
        timeout=timeout,
        # psycopg_pool retries a failed connection with a delay doubling from 1 s until
        # it gives up: after a 30 s outage its next attempt can be half a minute away,
        # and every defer times out meanwhile. Giving up soon instead lets the next
        # connection request start a fresh attempt, at once.
        reconnect_timeout=RECONNECT_TIMEOUT,
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


_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s&]+)", re.IGNORECASE)
#: Shorter "passwords" are left in messages: masking them would garble every word.
_MIN_MASKED = 3


def redact(text: str, conninfo: str) -> str:
    """``text`` with the password of ``conninfo`` (a URL or key=value string, however
    malformed) replaced by ``***``, in every spelling libpq might quote it."""
    secrets = {match.group(1).strip("'") for match in _KEYWORD_PASSWORD.finditer(conninfo)}
    _, found, rest = conninfo.partition("://")
    if found:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:
            # libpq splits user:password@host at the first @, a reader might at the last.
            for userinfo in (authority.rsplit("@", 1)[0], authority.split("@", 1)[0]):
                if ":" in userinfo:
                    password = userinfo.split(":", 1)[1]
                    secrets.update([password, *password.split("@")])
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        if len(secret) >= _MIN_MASKED:
            text = text.replace(secret, "***")
    return text


def package_version() -> str:
    """The installed pgworker's version ("unknown" when run from a bare source tree)."""
    try:
        return metadata.version("pgworker-queue")
    except metadata.PackageNotFoundError:
        return "unknown"
