"""Settings: the checks of the App's settings, and what a worker takes from them."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .recovery import Recovery
from .recycle import NO_RECYCLING, Recycle

if TYPE_CHECKING:
    from .app import App

#: ``App(forbidden_flags=...)``: the flags, or a function (plain or async) giving them.
ForbiddenFlags = (
    Sequence[str]
    | Callable[[], Sequence[str] | None]
    | Callable[[], Awaitable[Sequence[str] | None]]
    | None
)


#: How long a prefetched job may wait for an executor before it is given back: Node's.
DEFAULT_PREFETCH_TTL = 300.0


@dataclass(frozen=True, slots=True)
class RefetchDelay:
    """A pause after a fetch that came back short: the next fetch waits ``duration``
    seconds (times a random 0.5 to 1.5, so that idle workers spread out) once a fetch
    returns ``threshold`` jobs or fewer (and fewer than it asked for). Notifications of
    new jobs cut the pause short after a random count up to ``max_abort_threshold``
    (None: five times the fetch size). Fewer, fuller fetches on a trickle of jobs, for
    up to 1.5 times ``duration`` more latency; ``duration`` may not exceed the poll
    interval. As in graphile-worker's local queue, a worker with a refetch delay fetches
    when notified, when it has room for a batch, and at each poll, but not each time it
    records an outcome: the next job of a named queue may wait for the poll.
    """

    duration: float = 0.1
    threshold: int = 0
    max_abort_threshold: int | None = None

    def __post_init__(self) -> None:
        check_positive("RefetchDelay.duration", self.duration)
        check_not_negative("RefetchDelay.threshold", self.threshold)
        if self.max_abort_threshold is not None:
            check_positive("RefetchDelay.max_abort_threshold", self.max_abort_threshold)


@dataclass(frozen=True, slots=True)
class LocalQueue:
    """The local queue, ``App(prefetch=LocalQueue(...))`` (``prefetch=N`` is
    ``LocalQueue(size=N)``): a worker claims up to ``size`` jobs beyond those it runs,
    in batches, and keeps them for its executors. A job that waits longer than ``ttl``
    seconds goes back to the database, its attempt refunded, as do the waiting ones when
    the worker stops. ``refetch_delay`` pauses fetching after short fetches."""

    size: int
    ttl: float = DEFAULT_PREFETCH_TTL
    refetch_delay: RefetchDelay | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise ConfigurationError(f"prefetch must be a number of jobs, got {self.size!r}")
        check_not_negative("prefetch", self.size)
        check_positive("LocalQueue.ttl", self.ttl)


def local_queue(prefetch: int | LocalQueue, poll_interval: float) -> LocalQueue:
    """``App(prefetch=...)`` as a LocalQueue, checked against the poll interval."""
    queue = prefetch if isinstance(prefetch, LocalQueue) else LocalQueue(prefetch)
    delay = queue.refetch_delay
    if delay is not None and delay.duration > poll_interval:
        raise ConfigurationError(
            f"the refetch delay ({delay.duration:g} s) must not be longer than "
            f"poll_interval ({poll_interval:g} s)"
        )
    return queue


def check_batch_delays(complete_batch_delay: float, fail_batch_delay: float) -> None:
    """Refuse negative waits for batching outcomes."""
    check_not_negative("complete_batch_delay", complete_batch_delay)
    check_not_negative("fail_batch_delay", fail_batch_delay)


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
    #: Seconds a prefetched job may wait for an executor before it is given back.
    prefetch_ttl: float = DEFAULT_PREFETCH_TTL
    refetch_delay: RefetchDelay | None = None
    #: Seconds the completer waits to gather successes (failures) into one statement
    #: (the fetcher's next claim completes waiting successes sooner if it comes first).
    complete_batch_delay: float = 0.0
    fail_batch_delay: float = 0.0
    #: LISTEN for new jobs; False polls only (PgBouncer in transaction mode).
    listen: bool = True
    #: When the worker stops by itself so that a fresh process takes over.
    recycle: Recycle = NO_RECYCLING


def worker_settings(
    app: App, *, once: bool, exit_on_overrun: bool, recycle: Recycle = NO_RECYCLING
) -> WorkerSettings:
    """What a worker of ``app`` takes from its settings (``once``: a run-once worker)."""
    queue = local_queue(app.local_queue, app.poll_interval)
    return WorkerSettings(
        schema=app.schema,
        concurrency=app.concurrency,
        prefetch=queue.size,
        poll_interval=app.poll_interval,
        shutdown_grace_period=app.shutdown_grace_period,
        interrupted_retry_delay=app.interrupted_retry_delay,
        recovery=app.recovery,
        async_concurrency=app.async_concurrency,
        default_timeout=app.default_timeout,
        hard_timeout=app.hard_timeout,
        exit_on_overrun=exit_on_overrun,
        once=once,
        worker_id=app.worker_id,
        use_local_time=app.use_local_time,
        prefetch_ttl=queue.ttl,
        refetch_delay=queue.refetch_delay,
        complete_batch_delay=app.complete_batch_delay,
        fail_batch_delay=app.fail_batch_delay,
        listen=app.listen,
        recycle=recycle,
    )


def check_schema(schema: str, *, source: str = "schema") -> None:
    """A schema name PostgreSQL takes, 1 to 63 characters, and without ``%``, which
    psycopg reads as a parameter even inside the quoted name (``source`` names the
    setting in the error)."""
    if not 0 < len(schema) <= 63:
        raise ConfigurationError(f"{source} must be 1 to 63 characters, got {schema!r}")
    if "%" in schema:
        raise ConfigurationError(
            f"{source} may not contain '%' (statements use it for parameters), got {schema!r}"
        )


def derived_schema(schema: str, suffix: str, what: str, hint: str = "") -> str:
    """The name of a schema of pgworker's own beside the worker schema ``schema``
    (``schema`` + ``suffix``, its ``what``), which must fit PostgreSQL's 63 characters;
    ``hint`` ends the error otherwise."""
    name = schema + suffix
    if len(name) > 63:
        raise ConfigurationError(
            f"the worker schema {schema!r} is too long to derive {what} name from "
            f"({name!r} is over 63 characters)" + (f": {hint}" if hint else "")
        )
    return name


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
