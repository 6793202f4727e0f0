"""App: the settings, the task registry and the database pool of one pgworker application."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg_pool import ConnectionPool

from .admin import Admin
from .connections import DEFAULT_PREPARE_THRESHOLD
from .context import Extensions, JobContext
from .cron import CronItem
from .embedded import (
    EmbeddedServer,
)
from .enqueue import Enqueueing
from .errors import ConfigurationError
from .hooks import Hooks, Plugin
from .lifecycle import Lifecycle
from .migrate import MigrationOutcome, migrate_pool
from .payload import DEFAULT_MAX_PAYLOAD_BYTES
from .recovery import Recovery
from .recycle import NO_RECYCLING, Recycle
from .registry import Registry
from .settings import (
    DEFAULT_SCHEMA,
    ForbiddenFlags,
    LocalQueue,
    check_batch_delays,
    check_database_source,
    check_positive,
    check_schema,
    check_worker_id,
    local_queue,
    worker_settings,
)
from .store import Connection, Store
from .task import Task

if TYPE_CHECKING:
    from .control import WorkerHandle
    from .testing.eager import EagerMode
    from .worker import Worker

logger = logging.getLogger(__name__)


class App(Lifecycle, Registry, Enqueueing):
    """A pgworker application: tasks are registered on it, jobs deferred and run through it.

    Nothing connects until ``open()`` (or ``with app:``); ``run()``, ``run_once()`` and
    ``start()`` open the app themselves when needed.

    - ``database_url``: a libpq connection string or URL. Without one, the app follows
      the database rule when it opens: ``DATABASE_URL``, else libpq's ``PG*`` variables,
      else an embedded development PostgreSQL (see ``pgworker.embedded``).
    - ``embedded``: False forbids that embedded fallback (as ``PGWORKER_NO_EMBEDDED=1``
      does): a missing setting then fails instead of starting a server.
    - ``schema``: the worker schema, shared with any Node or Rust worker on the database.
      Without one, the app takes ``GRAPHILE_WORKER_SCHEMA`` when it opens (as
      graphile-worker does), else ``graphile_worker``.
    - ``concurrency``: how many jobs of sync tasks run at once, each on its own thread.
    - ``async_concurrency``: how many jobs of ``async def`` tasks run at once, on the
      worker's one event loop (a job awaiting I/O holds no thread); counted apart from
      ``concurrency``.
    - ``poll_interval``: seconds between polls when no notification arrives.
    - ``pool``: a psycopg_pool ConnectionPool you own; the app uses it and never closes it.
    - ``max_pool_size``: the size of the pool the app makes (default concurrency + 4).
    - ``pool_timeout``: seconds a ``defer`` (or any pool user) waits for a connection
      before DatabaseUnavailableError: a web request during an outage fails fast.
    - ``shutdown_grace_period``: seconds running jobs get to finish after a stop signal.
    - ``interrupted_retry_delay``: seconds before a job cut off by a forced stop runs again.
    - ``forbidden_flags``: flags whose jobs this app's workers leave to others: a list, or
      a function (plain or async) returning one, called before every fetch.
    - ``extensions``: objects tasks read with ``ctx.get_ext(TheirType)`` (app state).
    - ``plugins``: Plugin objects whose hooks see every step of workers and jobs.
    - ``crontab``, ``crontab_file``: recurring jobs in graphile-worker's crontab format;
      ``app.cron(...)`` adds them from Python.
    - ``prefetch``: the local queue: how many jobs a worker may claim beyond those it is
      running, so that it claims in batches; a ``LocalQueue`` also sets how long they may
      wait (5 min) and a refetch delay. Good for many short jobs; keep 0 (the default)
      for long ones, or prefetched jobs wait behind them while other workers idle.
    - ``complete_batch_delay``, ``fail_batch_delay``: seconds a worker waits to gather
      more successes (failures) into one statement; 0 (the default) writes at once.
      Successes also go out with the worker's next claim, in its statement, if it comes
      first.
    - ``recovery``: how workers heartbeat and give back the jobs of dead ones (on by
      default: a crashed worker's jobs run again within a minute); ``Recovery(enabled=
      False)`` leaves them to graphile-worker's 4-hour rule.
    - ``default_timeout``: seconds a job of a task without its own ``timeout`` may run
      (None, the default: no limit). See ``task()``.
    - ``hard_timeout``: seconds past its timeout after which a job that still runs has
      overrun it: ``run()`` (and ``pgworker run``) then stops the worker so that a fresh
      process can take over, failing the job; ``start()`` only logs and tells plugins.
    - ``worker_id``: the id of this app's workers (``locked_by`` of their jobs, their key
      in the worker registry); default ``pgworker-`` and 18 random hex digits. A worker
      refuses to start (WorkerIdInUseError) while a live worker is registered under its
      id, and gives back the jobs a dead one of the same id left locked.
    - ``use_local_time``: take "now" from this process's clock instead of the database's,
      as graphile-worker's ``useNodeTime``: a job deferred without ``run_at`` gets this
      process's time, and workers fetch the jobs whose run_at has passed by it. Locks and
      retries keep the database's clock.
    - ``enqueue_schema``: add jobs through the SECURITY DEFINER functions in this schema
      (see ``grant_enqueue``), for a role with no privilege on the worker schema; a
      ``defer`` then reads back only the new job's id (docs/permissions.md).
    - ``max_payload_bytes``: the largest payload ``defer`` sends, in bytes of JSON (1 MiB;
      None: no limit but PostgreSQL's); a larger one raises PayloadError.
    - ``listen``: False runs workers poll-only, without a LISTEN connection: new jobs wait
      up to ``poll_interval``. For PgBouncer in transaction mode (docs/deployment.md).
    - ``prepare_threshold``: psycopg's; None never prepares statements on the app's
      connections, which PgBouncer in transaction mode needs (a pool you pass is yours
      to set up alike).
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        embedded: bool = True,
        schema: str | None = None,
        concurrency: int = 4,
        async_concurrency: int = 100,
        poll_interval: float = 2.0,
        pool: ConnectionPool[Connection] | None = None,
        max_pool_size: int | None = None,
        pool_timeout: float = 5.0,
        shutdown_grace_period: float = 30.0,
        interrupted_retry_delay: float = 30.0,
        prefetch: int | LocalQueue = 0,
        complete_batch_delay: float = 0.0,
        fail_batch_delay: float = 0.0,
        forbidden_flags: ForbiddenFlags = None,
        extensions: Iterable[object] = (),
        plugins: Iterable[Plugin] = (),
        crontab: str | None = None,
        crontab_file: str | os.PathLike[str] | None = None,
        recovery: Recovery | None = None,
        default_timeout: float | None = None,
        hard_timeout: float = 30.0,
        worker_id: str | None = None,
        use_local_time: bool = False,
        enqueue_schema: str | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        listen: bool = True,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    ) -> None:
        if schema is not None:
            check_schema(schema)
        if enqueue_schema is not None:
            check_schema(enqueue_schema)
        check_database_source(pool, database_url)
        check_positive("concurrency", concurrency)
        check_positive("async_concurrency", async_concurrency)
        check_positive("poll_interval", poll_interval)
        self.local_queue = local_queue(prefetch, poll_interval)
        check_batch_delays(complete_batch_delay, fail_batch_delay)
        if default_timeout is not None:
            check_positive("default_timeout", default_timeout)
        check_positive("hard_timeout", hard_timeout)
        if worker_id is not None:
            check_worker_id(worker_id)
        if max_payload_bytes is not None:
            check_positive("max_payload_bytes", max_payload_bytes)
        if shutdown_grace_period < 0 or interrupted_retry_delay < 0:
            raise ConfigurationError(
                "shutdown_grace_period and interrupted_retry_delay must be >= 0"
            )
        self.database_url = database_url
        self.embedded = embedded
        self._embedded: EmbeddedServer | None = None
        #: The schema in use: until an app with no ``schema`` opens, the default one.
        self.schema = schema or DEFAULT_SCHEMA
        self._schema_given = schema is not None
        self.enqueue_schema = enqueue_schema
        self.concurrency = concurrency
        self.async_concurrency = async_concurrency
        self.poll_interval = poll_interval
        self.max_pool_size = max_pool_size or concurrency + 4
        check_positive("pool_timeout", pool_timeout)
        self.pool_timeout = pool_timeout
        self.shutdown_grace_period = shutdown_grace_period
        self.interrupted_retry_delay = interrupted_retry_delay
        self.complete_batch_delay = complete_batch_delay
        self.fail_batch_delay = fail_batch_delay
        self.recovery = recovery or Recovery()
        self.default_timeout = default_timeout
        self.hard_timeout = hard_timeout
        self.worker_id = worker_id
        self.use_local_time = use_local_time
        self.max_payload_bytes = max_payload_bytes
        self.listen = listen
        self.prepare_threshold = prepare_threshold
        self.forbidden_flags = forbidden_flags
        self.extensions = Extensions(extensions)
        self.hooks = Hooks(plugins)
        self.cron_items: list[CronItem] = []
        if crontab is not None:
            self.add_crontab(crontab)
        if crontab_file is not None:
            try:
                text = Path(crontab_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"cannot read the crontab {crontab_file}: {exc}") from exc
            self.add_crontab(text, source=str(crontab_file))
        self.tasks: dict[str, Task[Any, Any, Any]] = {}
        self._own_pool = pool is None
        self._pool = pool
        self.store = Store(None, self.schema)
        if pool is not None:
            self._settle_schema()
            self.store.pool = pool

    def configure(
        self,
        *,
        database_url: str | None = None,
        schema: str | None = None,
        concurrency: int | None = None,
        async_concurrency: int | None = None,
        poll_interval: float | None = None,
        prefetch: int | None = None,
        worker_id: str | None = None,
        listen: bool | None = None,
        prepare_statements: bool | None = None,
    ) -> App:
        """Override settings (what the CLI's options do). The database, the schema and
        ``prepare_statements`` (False: ``prepare_threshold=None``) can only change before
        the app opens."""
        changes_connection = (
            (database_url is not None and database_url != self.database_url)
            or (schema is not None and schema != self.schema)
            or prepare_statements is not None
        )
        if self.is_open and changes_connection:
            raise ConfigurationError(
                "the database, schema and prepared statements can only change before the app "
                "is opened"
            )
        if schema is not None:
            check_schema(schema)
            self._schema_given = True
            if schema != self.schema:
                self.schema = schema
                self.store = Store(None, schema)
        if concurrency is not None:
            check_positive("concurrency", concurrency)
            self.concurrency = concurrency
            self.max_pool_size = max(self.max_pool_size, concurrency + 4)
        if async_concurrency is not None:
            check_positive("async_concurrency", async_concurrency)
            self.async_concurrency = async_concurrency
        if poll_interval is not None:
            check_positive("poll_interval", poll_interval)
            self.poll_interval = poll_interval
        if prefetch is not None:
            self.local_queue = replace(self.local_queue, size=prefetch)
        if worker_id is not None:
            check_worker_id(worker_id)
            self.worker_id = worker_id
        if database_url is not None:
            self.database_url = database_url
        if listen is not None:
            self.listen = listen
        if prepare_statements is not None:
            self.prepare_threshold = DEFAULT_PREPARE_THRESHOLD if prepare_statements else None
        return self

    def eager(self) -> AbstractContextManager[EagerMode]:
        """For tests: within ``with app.eager():``, a deferred job runs its task inline,
        without a database, and ``defer`` returns once it ran (see pgworker.testing)."""
        from .testing.eager import eager_mode

        return eager_mode(self)

    @property
    def admin(self) -> Admin:
        """Operations on jobs: remove, complete, fail, reschedule, unlock, clean up, list."""
        return Admin(self.store, known_tasks=list(self.tasks))

    # -- running ----------------------------------------------------------------------

    def migrate(self) -> MigrationOutcome:
        """Install or upgrade the worker schema; safe to call from many processes at once."""
        return migrate_pool(self.pool, self.schema)

    def run(
        self,
        *,
        install_signal_handlers: bool = True,
        max_jobs: int | None = None,
        max_memory_mb: float | None = None,
    ) -> None:
        """Run a worker until SIGINT/SIGTERM (or ``KeyboardInterrupt``); blocks.

        The first signal stops fetching and lets running jobs finish within
        ``shutdown_grace_period``; a second one stops waiting for them. With
        ``max_jobs`` or ``max_memory_mb`` (MiB of resident memory), the worker also stops
        itself gracefully after that many jobs or above that size, for a supervisor to
        start a fresh process (``pgworker run --processes``).
        """
        recycle = Recycle(max_jobs=max_jobs, max_memory_mb=max_memory_mb)
        with self._opened():
            self.migrate()
            worker = self._worker(exit_on_overrun=True, recycle=recycle)
            worker.run(install_signal_handlers=install_signal_handlers)

    def run_once(self, *, install_signal_handlers: bool = True) -> None:
        """Run every job that is runnable now, including the ones that become runnable
        meanwhile (the next job of a named queue), then return. Future jobs stay.

        Signals stop it as they stop ``run()`` (when called from the main thread).
        """
        with self._opened():
            self.migrate()
            worker = self._worker(once=True, exit_on_overrun=True)
            worker.run(install_signal_handlers=install_signal_handlers)

    def start(self) -> WorkerHandle:
        """Start a worker in background threads and return its handle.

        For running beside a web server or in tests; call ``handle.stop()`` to end it.
        The app must be open (the handle does not close it).
        """
        from .control import WorkerHandle

        self.migrate()
        return WorkerHandle.start(self._worker())

    def _worker(
        self, *, once: bool = False, exit_on_overrun: bool = False, recycle: Recycle = NO_RECYCLING
    ) -> Worker:
        """A worker for this app's tasks, plugins and settings."""
        from .worker import Worker

        settings = worker_settings(
            self, once=once, exit_on_overrun=exit_on_overrun, recycle=recycle
        )
        return Worker(
            store=self.store,
            conninfo=self.conninfo,
            tasks=dict(self.tasks),
            hooks=self.hooks,
            settings=settings,
            make_context=lambda running, worker_id: JobContext(
                running.job, self, worker_id, running
            ),
            forbidden_flags=self.current_forbidden_flags,
            cron_items=self.cron_items,
        )
