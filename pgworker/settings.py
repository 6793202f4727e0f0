"""Settings: the checks of the App's settings, and what a worker takes from them."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .recovery import Recovery

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


def check_schema(schema: str) -> None:
    """A schema name PostgreSQL takes: 1 to 63 characters."""
    if not 0 < len(schema) <= 63:
        raise ConfigurationError(f"schema must be 1 to 63 characters, got {schema!r}")


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
