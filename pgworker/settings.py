"""Settings: the checks of the App's settings, and what a worker takes from them."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .recovery import Recovery
from .recycle import NO_RECYCLING, Recycle

#: ``App(forbidden_flags=...)``: the flags, or a function (plain or async) giving them.
ForbiddenFlags = (
    Sequence[str]
    | Callable[[], Sequence[str] | None]
    | Callable[[], Awaitable[Sequence[str] | None]]
    | None
)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker needs to know from its app's settings."""

    schema: str
    concurrency: int
    prefetch: int
    poll_interval: float
    shutdown_grace_period: float
    interrupted_retry_delay: float
    recovery: Recovery
    async_concurrency: int = 100
    default_timeout: float | None = None
    #: Seconds past its timeout after which a job that still runs has overrun it.
    hard_timeout: float = 30.0
    #: On an overrun, stop the worker (the CLI's process then exits), else only report.
    exit_on_overrun: bool = False
    once: bool = False
    #: The lock-owner id asked for (``App(worker_id=...)``); None: a generated one.
    worker_id: str | None = None
    #: Runnable means run_at <= this process's clock, not the database's.
    use_local_time: bool = False
    #: LISTEN for new jobs; False polls only (PgBouncer in transaction mode).
    listen: bool = True
    #: When the worker stops by itself so that a fresh process takes over.
    recycle: Recycle = NO_RECYCLING


def check_schema(schema: str, *, source: str = "schema") -> None:
    """A schema name PostgreSQL takes: 1 to 63 characters (``source`` names the setting
    in the error)."""
    if not 0 < len(schema) <= 63:
        raise ConfigurationError(f"{source} must be 1 to 63 characters, got {schema!r}")


#: The worker schema when nothing names one: graphile-worker's.
DEFAULT_SCHEMA = "graphile_worker"
#: The environment variable graphile-worker reads its default schema from.
SCHEMA_VARIABLE = "GRAPHILE_WORKER_SCHEMA"


def default_schema() -> str:
    """The schema of an app that names none, as graphile-worker picks it:
    ``GRAPHILE_WORKER_SCHEMA`` if set and not empty, else ``graphile_worker``. Read when
    the app opens, never at import."""
    value = os.environ.get(SCHEMA_VARIABLE)
    if not value:
        return DEFAULT_SCHEMA
    check_schema(value, source=SCHEMA_VARIABLE)
    return value


#: The longest worker id accepted: it is ``locked_by`` of jobs, a registry key and a
#: prefix of thread names, not a place for prose.
MAX_WORKER_ID_LENGTH = 128


def check_worker_id(worker_id: str) -> None:
    """A worker id: 1 to 128 printable characters, no spaces."""
    if not isinstance(worker_id, str) or not 0 < len(worker_id) <= MAX_WORKER_ID_LENGTH:
        raise ConfigurationError(
            f"worker_id must be 1 to {MAX_WORKER_ID_LENGTH} characters, got {worker_id!r}"
        )
    if not worker_id.isprintable() or any(c.isspace() for c in worker_id):
        raise ConfigurationError(
            f"worker_id must be printable characters without spaces, got {worker_id!r}"
        )


def check_positive(name: str, value: float) -> None:
    """Refuse a setting that must be positive."""
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value}")


def check_not_negative(name: str, value: float) -> None:
    """Refuse a setting that must be at least 0."""
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {value}")


def check_database_source(pool: object | None, database_url: str | None) -> None:
    """Refuse a pool and a database URL together: the pool already names its database."""
    if pool is not None and database_url is not None:
        raise ConfigurationError(
            "give either pool or database_url, not both: the pool already names the database"
        )


def resolve_forbidden_flags(setting: ForbiddenFlags) -> list[str] | None:
    """The forbidden flags for the next fetch: ``setting``, or what it returns when it is
    a function; an async function is run to completion on the calling (fetcher) thread."""
    flags: Any = setting() if callable(setting) else setting
    if inspect.isawaitable(flags):
        flags = asyncio.run(_awaited(flags))
    if flags is None:
        return None
    if isinstance(flags, str) or not all(isinstance(f, str) for f in flags):
        raise ConfigurationError(f"forbidden_flags must give a list of strings, got {flags!r}")
    return list(flags)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
