"""Worker: composes the threads that claim, run and record jobs, and stops them.

The threads of one worker, each a component with a ``run(stop)`` loop on the one stop
signal (a ``threading.Event``):

=============  ==============================  ==========================================
thread         owns                            stops
=============  ==============================  ==========================================
caller's       ``Fetcher``: claims jobs into   on stop (``run()`` then shuts down)
               ``InFlight``, hands them out
executor-N     ``Executors``: run one sync     on stop, once its queue is empty; a job
               job at a time (``JobRunner``)   that is running finishes first
async-steps    ``AsyncJobs``: the steps of an  on stop, once every async job it took is
               async job around its coroutine done with (only with async tasks)
               (decoding, plugin hooks)
async-loop     ``AsyncRunner``: the event      after the last async job, from the
               loop the coroutines of async    shutdown (a forced stop cancels them; each
               jobs run on, ``async_           is given back once it has unwound)
               concurrency`` at a time
completer      ``Completer``: writes outcomes  on stop, once every claimed job is settled
               in batches (successes go out
               with the fetcher's next claim
               when one is coming), reports
               to plugins
watch          ``Watch``: deadlines and        on stop, once no job of ours is running
               cancel requests of running
               jobs
heartbeat      ``Heartbeat``: the registry     on stop, once no job of ours is running
               row of this worker
listener       ``Listener``: LISTEN, wakes     on stop
               the fetcher
maintenance    ``Sweeper``: dead-worker sweep  on stop
               and the 4-hour reset
cron           ``CronScheduler``               on stop
=============  ==============================  ==========================================

A stop first ends job starts (``InFlight.stop_starting``): what a claim in flight brings
waits to be given back, and no job starts after the threads that end with the last one.

Never twice at once: a job whose code still runs in this process stays locked by this
worker, heartbeat included, until that code returns and its outcome is recorded. A
forced stop only stops waiting for it (and cancels async jobs' coroutines, which give
their jobs back once they have unwound); the process exit path is the one other place
that gives such jobs back.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .admin import Admin
from .completer import Completer
from .context import JobContext
from .control import install_stop_signals
from .cron import CronItem
from .database import describe, package_version
from .errors import IncompatibleSchemaError, PgWorkerError
from .fetcher import Fetcher
from .giveback import GiveBack
from .hooks import Hooks, WorkerInfo
from .inflight import InFlight
from .listener import Listener, ListenState
from .migrate import SCHEMA_REVISION
from .recovery import Heartbeat, Sweeper, worker_metadata
from .recycle import Recycler
from .runner import Executors, JobRunner
from .running import RunningJob
from .scheduler import CronScheduler
from .settings import WorkerSettings
from .stopping import Stopping
from .store import Store
from .task import Task
from .watch import Watch

if TYPE_CHECKING:
    from .async_jobs import AsyncJobs

logger = logging.getLogger(__name__)

#: pgworker's version, as the start-up line and the registry show it.
VERSION = package_version()


class Worker(Stopping):
    """One worker process's machinery, sharing one lock-owner id. ``run()`` blocks in
    the calling thread, which does the fetching."""

    def __init__(
        self,
        *,
        store: Store,
        conninfo: str,
        tasks: Mapping[str, Task[Any, Any, Any]],
        hooks: Hooks,
        settings: WorkerSettings,
        make_context: Callable[[RunningJob, str], JobContext],
        forbidden_flags: Callable[[], Sequence[str] | None],
        cron_items: Sequence[CronItem] = (),
    ) -> None:
        if not tasks:
            raise PgWorkerError("the app has no tasks: register some with @app.task(...)")
        self.worker_id = settings.worker_id or f"pgworker-{secrets.token_hex(9)}"
        self.store = store
        self.conninfo = conninfo
        self.tasks = tasks
        self.hooks = hooks
        self.settings = settings
        self.cron_items = list(cron_items)
        self.forbidden_flags = forbidden_flags
        self.has_sync_tasks = any(not task.is_async for task in tasks.values())
        self.runner = JobRunner(
            tasks,
            hooks,
            lambda running: make_context(running, self.worker_id),
            default_timeout=settings.default_timeout,
        )
        self.inflight = InFlight(
            settings.concurrency + settings.prefetch if self.has_sync_tasks else 0
        )
        self.completer = Completer(
            store,
            conninfo,
            self.worker_id,
            hooks,
            self.inflight,
            on_settled=self._wake_after_outcome,
            interrupted_retry_delay=settings.interrupted_retry_delay,
            complete_delay=settings.complete_batch_delay,
            fail_delay=settings.fail_batch_delay,
        )
        self.recycler = Recycler(settings.recycle, on_limit=self.request_stop)
        record = self.recycler.counting(self.completer.put)
        self.executors = Executors(self.runner, self.inflight, record)
        self.async_jobs: AsyncJobs | None = None
        if any(task.is_async for task in tasks.values()):
            # Imported here: the event loop's machinery loads only for apps with async tasks.
            from .async_jobs import AsyncJobs

            self.async_jobs = AsyncJobs(
                self.runner,
                self.inflight,
                record,
                limit=settings.async_concurrency,
                name=self.worker_id,
            )
            self.inflight.async_room = self.async_jobs.free_slots
        self.fetcher: Fetcher | None = None
        self.heartbeat: Heartbeat | None = None
        self.sweeper = Sweeper(store, conninfo, settings.recovery, hooks, self.worker_id)
        self.listener: Listener | None = None
        self._stop = threading.Event()
        self._forced = threading.Event()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._finished = threading.Event()
        self._threads: list[threading.Thread] = []
        self.exit_error: PgWorkerError | None = None
        self.give_back = GiveBack(store, conninfo, self.worker_id, settings.interrupted_retry_delay)
        self.watch = Watch(
            store,
            conninfo,
            self.inflight,
            poll_interval=settings.poll_interval,
            hard_limit=settings.hard_timeout,
            on_overrun=self._on_overrun,
        )

    # -- public -----------------------------------------------------------------------

    @property
    def info(self) -> WorkerInfo:
        """This worker as plugins see it."""
        return WorkerInfo(
            self.worker_id,
            self.settings.schema,
            self.settings.concurrency,
            tuple(sorted(self.tasks)),
            Admin(self.store, known_tasks=list(self.tasks)),
        )

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Prepare, run until stopped (or, with ``once``, until nothing is runnable), then
        shut down. Returns when every job is recorded, or sooner after a forced stop
        (jobs still running then stay this worker's until their code returns)."""
        self._prepare()
        self.hooks.worker_init(self.info)
        restore = install_stop_signals(self) if install_signal_handlers else None
        try:
            self._start_threads()
            self.hooks.worker_start(self.info)
            self._ready.set()
            settings = self.settings
            async_part = f" + {settings.async_concurrency} async" if self.async_jobs else ""
            logger.info(
                "Worker %s started: pgworker %s on %s, schema %r, concurrency %d%s, %d task(s): %s",
                self.worker_id,
                VERSION,
                describe(self.conninfo),
                settings.schema,
                settings.concurrency,
                async_part,
                len(self.tasks),
                ", ".join(sorted(self.tasks)),
            )
            assert self.fetcher is not None
            self.fetcher.run(self._stop, once=self.settings.once)
        finally:
            try:
                self._shutdown()
            finally:
                if restore is not None:
                    restore()
                self._stopped.set()
        if self.exit_error is not None:
            raise self.exit_error

    @property
    def exit_reason(self) -> str | None:
        """Why the worker stopped by itself (None if it was asked to)."""
        return None if self.exit_error is None else str(self.exit_error)

    def request_stop(self, *, force: bool = False) -> None:
        """Stop fetching and let running jobs finish; with ``force``, stop waiting for
        them (they still run to the end, and stay locked by this worker until then)."""
        if force:
            self._forced.set()
        self.inflight.stop_starting()  # first: see the module's docstring
        self._stop.set()
        self.inflight.wake()
        self.wake()

    def wake(self) -> None:
        """Look for jobs now instead of at the next poll (a notification arrived)."""
        if self.fetcher is not None:
            self.fetcher.wake()

    def _wake_idle_threads(self) -> None:
        # Called by the shutdown once the fetcher has returned: no job is submitted after
        # the executors' markers.
        if self.has_sync_tasks:
            self.executors.wake_all(self.settings.concurrency)
        self.completer.wake()
        self.watch.wake()

    def _wake_after_outcome(self) -> None:
        # Not a notification: it may have unlocked a queue, but no refetch delay ends.
        if self.fetcher is not None:
            self.fetcher.wake(notification=False)

    @property
    def is_listening(self) -> bool:
        """Whether the LISTEN connection is up (False for run-once workers, which poll)."""
        return self.listener is not None and self.listener.is_listening

    def wait_listening(self, timeout: float) -> bool:
        """Wait until the LISTEN connection is up; False on timeout or without one."""
        return self.listener is not None and self.listener.wait_listening(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until ``run()`` has returned."""
        return self._stopped.wait(timeout)

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until every job this worker claimed is recorded or given back and the
        worker has left the registry: nothing of it touches the database any more
        (after a forced stop this can be well after ``run()`` returned)."""
        return self._finished.wait(timeout)

    # -- start-up ---------------------------------------------------------------------

    def _prepare(self) -> None:
        for item in self.cron_items:
            task = self.tasks.get(item.task)
            if task is None:
                logger.warning(
                    "Cron item %r makes %r jobs, which this app has no task for",
                    item.identifier,
                    item.task,
                )
            else:
                item.check_payload(task.codec)
        task_names = self.store.register_tasks(sorted(self.tasks))
        is_async = {i: self.tasks[name].is_async for i, name in task_names.items()}
        settings = self.settings
        self.fetcher = Fetcher(
            self.store,
            self.conninfo,
            self.worker_id,
            self.hooks,
            self.inflight,
            task_names={i: name for i, name in task_names.items() if not is_async[i]},
            batch=max(1, settings.prefetch),
            poll_interval=settings.poll_interval,
            forbidden_flags=self.forbidden_flags,
            hand_out=self.executors.submit,
            async_task_names={i: name for i, name in task_names.items() if is_async[i]},
            async_lane=self.async_jobs,
            use_local_time=settings.use_local_time,
            ttl=settings.prefetch_ttl if settings.prefetch else None,
            refetch_delay=settings.refetch_delay,
            completions=self.completer,
        )
        self.completer.claim_expected = self.fetcher.claims_soon
        if settings.recovery.enabled:
            metadata = worker_metadata(self.worker_id, list(self.tasks), VERSION)
            self.heartbeat = Heartbeat(
                self.store,
                self.conninfo,
                self.worker_id,
                metadata,
                settings.recovery.heartbeat_interval,
                still_running=lambda timeout: not self.inflight.wait_running_done(timeout),
                stale_after=settings.recovery.stale_after,
                made_up_id=settings.worker_id is None,
            )
            # On the fetcher's connection, as the run-once sweep below: the first claim
            # then needn't wait for one more connection (the heartbeat opens its own
            # when it first beats).
            self.heartbeat.register(self.fetcher.connection)
        # If the process exits before every claimed job is recorded, give them back.
        atexit.register(self._give_back_at_exit)
        if settings.once:
            # A fleet of run-once workers has no maintenance thread: sweep here instead.
            if settings.recovery.enabled:
                self.sweeper.sweep(self.fetcher.connection)
            self.sweeper.reset_stale_locks(report_unserved=False, conn=self.fetcher.connection)

    def _start_threads(self) -> None:
        def spawn(name: str, body: Callable[[threading.Event], None]) -> None:
            # Daemon threads: a task stuck forever must not keep the process alive.
            thread = threading.Thread(
                target=body, args=(self._stop,), name=f"{self.worker_id}-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

        if self.has_sync_tasks:
            for i in range(self.settings.concurrency):
                spawn(f"executor-{i}", self.executors.run)
        if self.async_jobs is not None:
            self.async_jobs.start()
            spawn("async-steps", self.async_jobs.run)
        spawn("completer", self.completer.run)
        spawn("watch", self.watch.run)
        if self.heartbeat is not None:
            spawn("heartbeat", self.heartbeat.run)
        if self.settings.recycle.max_memory_mb is not None:
            spawn("recycle", self.recycler.run)
        if self.settings.once:
            return
        spawn("maintenance", self.sweeper.run)
        if self.cron_items:
            spawn("cron", CronScheduler(self.store, self.cron_items, hooks=self.hooks).run)
        if not self.settings.listen:  # poll-only: no LISTEN, as under PgBouncer's
            return  # transaction pooling, where a session's LISTEN can't last
        self.listener = Listener(
            self.store,
            self.conninfo,
            on_notify=self.wake,
            on_breaking=self._on_breaking,
            on_cancel=self.watch.wake,
            hooks=self.hooks,
            on_state=self._on_listen_state,
        )
        spawn("listener", self.listener.run)

    def _on_listen_state(self, state: ListenState) -> None:
        # Polling stands in for LISTEN while it is down; the registry shows the state.
        if self.fetcher is not None:
            self.fetcher.poll_interval = state.poll_interval(self.settings.poll_interval)
            self.fetcher.wake()
        if self.heartbeat is not None:
            self.heartbeat.report("listen", state.as_metadata())

    def _on_breaking(self, revision: int) -> None:
        # worker:migrate is not per schema: a breaking migration of another schema in the
        # same database notifies us too. Stop only if our own ledger moved past us.
        try:
            latest, latest_breaking = self.store.schema_revision()
        except Exception as exc:  # unchecked, the new schema may be ours: stop to be safe
            reason = f"a breaking migration was announced; reading the revision failed ({exc})"
        else:
            if latest_breaking <= SCHEMA_REVISION:
                logger.info("Ignoring a breaking migration (%d) of another schema", revision)
                return
            reason = f"schema revision {latest} is newer than this pgworker understands"
        logger.warning("Stopping: %s (migrated by another worker)", reason)
        self.exit_error = IncompatibleSchemaError(f"the worker stopped: {reason}")
        self.request_stop()

    def _on_overrun(self, running: RunningJob) -> None:
        job = running.job
        message = (
            f"job #{job.id} ({job.task_identifier}) still runs {self.settings.hard_timeout:g} s "
            f"after its timeout of {running.timeout:g} s"
        )
        self.hooks.job_overran(job, running.timeout or 0.0)
        if not self.settings.exit_on_overrun:
            logger.error("%s: its thread stays busy until it returns", message)
            return
        logger.error(
            "%s: stopping to free its thread (a supervisor should start a new worker)", message
        )
        self.exit_error = PgWorkerError(f"the worker stopped: {message}")
        self.request_stop()
