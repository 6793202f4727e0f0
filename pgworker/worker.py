"""Worker: claims jobs, runs them on a thread pool, records outcomes, shuts down cleanly."""

from __future__ import annotations

import logging
import queue
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import msgspec
import psycopg

from .connections import OwnConnection, backoff_delay
from .context import JobContext
from .errors import IncompatibleSchemaError, PayloadError, PgWorkerError
from .hooks import Complete, Fail, JobResult, Skip
from .listener import Listener
from .migrate import SCHEMA_REVISION
from .outcome import Outcome
from .scheduler import CronScheduler
from .store import INTERRUPTED_MESSAGE, ClaimedJob

if TYPE_CHECKING:
    from .app import App
    from .store import Connection

logger = logging.getLogger(__name__)

#: Upper bound on one batch of completions or failures written in a single statement.
MAX_OUTCOME_BATCH = 1000
#: Node's schedule for the 4-hour stale-lock reset: first run within a minute of start,
#: then every 8 to 10 minutes.
FIRST_RESET_WITHIN = 60.0
RESET_INTERVAL = (480.0, 600.0)
#: After a forced stop, how long the completer may take to finish (its plugin hooks).
FORCED_COMPLETER_WAIT = 5.0


class Worker:
    """One worker process's machinery: a fetch loop, executor threads, a completer,
    a LISTEN connection and a maintenance timer, all sharing one lock-owner id.

    ``run()`` blocks in the calling thread, which does the fetching.
    """

    def __init__(self, app: App, *, once: bool = False) -> None:
        self.app = app
        self.once = once
        self.worker_id = f"pgworker-{secrets.token_hex(9)}"
        self.concurrency = app.concurrency
        self.prefetch = app.prefetch
        self._task_names: dict[int, str] = {}
        self._work: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._state = threading.Condition()
        # Jobs in hand: claimed and not finished, running or waiting for an executor.
        self._free_slots = self.concurrency + self.prefetch
        self._unsettled = 0  # claimed and not yet written back
        self._in_hand: dict[int, ClaimedJob] = {}
        self._started: set[int] = set()
        self._abandoned: set[int] = set()  # given back: never run, never recorded
        self._fetch_conn = OwnConnection(app)
        self._complete_conn = OwnConnection(app)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._stopped = threading.Event()
        self._executors: list[threading.Thread] = []
        self._helpers: list[threading.Thread] = []
        self._ready = threading.Event()
        self._listener: Listener | None = None
        self.exit_reason: str | None = None

    # -- public -----------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Prepare, run until stopped (or, with ``once``, until nothing is runnable), then
        shut down leaving nothing locked by this worker."""
        self._prepare()
        self.app.hooks.notify("on_worker_init", self)
        restore = self._install_signal_handlers() if install_signal_handlers else None
        try:
            self._start_threads()
            self.app.hooks.notify("on_worker_start", self)
            self._ready.set()
            logger.info(
                "Worker %s started: %d task(s), concurrency %d, schema %r",
                self.worker_id,
                len(self._task_names),
                self.concurrency,
                self.app.schema,
            )
            self._fetch_loop()
        finally:
            try:
                self._shutdown()
            finally:
                if restore is not None:
                    restore()
                self._stopped.set()
        if self.exit_reason is not None:
            raise IncompatibleSchemaError(f"the worker stopped: {self.exit_reason}")

    def request_stop(self, *, force: bool = False) -> None:
        """Stop fetching; with ``force``, also give running jobs back without waiting."""
        self._stopping.set()
        if force:
            self._forced.set()
        self._wake.set()
        with self._state:
            self._state.notify_all()

    def wake(self) -> None:
        """Look for jobs now instead of at the next poll (a notification arrived)."""
        self._wake.set()

    @property
    def is_listening(self) -> bool:
        """Whether the LISTEN connection is up (False for run-once workers, which poll)."""
        return self._listener is not None and self._listener.is_listening

    def wait_listening(self, timeout: float) -> bool:
        """Wait until the LISTEN connection is up; False on timeout or without one."""
        return self._listener is not None and self._listener.wait_listening(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until ``run()`` has finished its shutdown."""
        return self._stopped.wait(timeout)

    # -- start-up ---------------------------------------------------------------------

    def _prepare(self) -> None:
        if not self.app.tasks:
            raise PgWorkerError("the app has no tasks: register some with @app.task(...)")
        for item in self.app.cron_items:
            task = self.app.tasks.get(item.task)
            if task is None:
                logger.warning(
                    "Cron item %r makes %r jobs, which this app has no task for",
                    item.identifier,
                    item.task,
                )
            else:
                item.check_payload(task.codec)
        self.app.migrate()
        self._task_names = self.app.store.register_tasks(sorted(self.app.tasks))
        if self.once:
            # A fleet of run-once workers has no maintenance thread: reset here instead.
            self._reset_stale_locks()

    def _start_threads(self) -> None:
        def spawn(name: str, target: Callable[[], None]) -> threading.Thread:
            # Daemon threads: a task stuck forever must not keep the process alive
            # after a forced stop has given its job back.
            thread = threading.Thread(target=target, name=f"{self.worker_id}-{name}", daemon=True)
            thread.start()
            return thread

        self._executors = [
            spawn(f"executor-{i}", self._execute_loop) for i in range(self.concurrency)
        ]
        self._helpers = [spawn("completer", self._complete_loop)]
        if not self.once:
            self._listener = Listener(self.app, on_notify=self.wake, on_breaking=self._on_breaking)
            self._helpers.append(spawn("listener", self._listener.run))
            self._helpers.append(spawn("maintenance", self._maintenance_loop))
            if self.app.cron_items:
                scheduler = CronScheduler(self.app.store, self.app.cron_items, hooks=self.app.hooks)
                self._helpers.append(spawn("cron", lambda: scheduler.run(self._stopping)))

    def _install_signal_handlers(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        seen = 0

        def handle(signum: int, frame: FrameType | None) -> None:
            nonlocal seen
            seen += 1
            name = signal.Signals(signum).name
            if seen == 1:
                logger.info(
                    "%s: stopping; running jobs get %.0f s to finish (again to stop now)",
                    name,
                    self.app.shutdown_grace_period,
                )
                self.request_stop()
            else:
                logger.warning("%s again: giving running jobs back and stopping now", name)
                self.request_stop(force=True)

        signums = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, handle) for s in signums}

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler)

        return restore

    def _on_breaking(self, revision: int) -> None:
        # worker:migrate is not per schema: a breaking migration of another schema in the
        # same database notifies us too. Stop only if our own ledger moved past us.
        latest, latest_breaking = self.app.store.schema_revision()
        if latest_breaking <= SCHEMA_REVISION:
            logger.info("Ignoring a breaking migration (%d) of another schema", revision)
            return
        self.exit_reason = f"schema revision {latest} is newer than this pgworker understands"
        logger.warning("Stopping: %s (migrated by another worker)", self.exit_reason)
        self.request_stop()

    # -- fetching ---------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        attempt = 0
        # With a prefetch buffer, claim only once it has room for a whole batch: fewer,
        # larger claims. Without one, claim as soon as an executor is free.
        batch = max(1, self.prefetch)
        while not self._stopping.is_set():
            with self._state:
                while self._free_slots < batch and not self._stopping.is_set():
                    self._state.wait()
                limit = self._free_slots
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                claimed = self.app.store.claim_jobs(
                    worker_id=self.worker_id,
                    task_names=self._task_names,
                    limit=limit,
                    forbidden_flags=self.app.current_forbidden_flags(),
                    conn=self._fetch_conn.get(),
                )
            except Exception as exc:  # the loop must outlive any one failure
                delay = backoff_delay(attempt)
                attempt += 1
                log = logger.warning if isinstance(exc, psycopg.Error) else logger.exception
                log("Fetching jobs failed (%s); retrying in %.1f s", exc, delay)
                self._stopping.wait(delay)
                continue
            attempt = 0
            # The claim's rows come back in no particular order; run them in the
            # fetch order (it matters with a prefetch buffer).
            claimed.sort(key=lambda c: (c.job.priority, c.job.run_at))
            with self._state:
                self._free_slots -= len(claimed)
                self._unsettled += len(claimed)
                for job in claimed:
                    self._in_hand[job.job.id] = job
                idle = self._unsettled == 0 and not self._wake.is_set()
            for job in claimed:
                self.app.hooks.notify("on_job_fetched", job.job)
                self._work.put(job)
            if len(claimed) == limit or any(c.job.queue_name for c in claimed):
                # There may be more: a full batch, or one cut short because it holds a
                # queue's next job in place of the rest of that queue's backlog (locked
                # now, so the next claim looks past it).
                continue
            if self.once and not claimed and idle:
                return
            # Nothing more runnable: sleep until a notification, a finished job (its
            # queue may hold the next one) or the poll interval, whichever comes first.
            self._wake.wait(None if self.once else self.app.poll_interval)

    # -- executing --------------------------------------------------------------------

    def _execute_loop(self) -> None:
        while True:
            claimed = self._work.get()
            if claimed is None:
                return
            with self._state:
                given_back = claimed.job.id in self._abandoned
                if not given_back:
                    self._started.add(claimed.job.id)
            if given_back:  # a stop returned it before it started: don't run it
                continue
            try:
                outcome = self._run_job(claimed)
            except BaseException as exc:  # never let a job take the thread down
                logger.exception("Unexpected error running job %d", claimed.job.id)
                outcome = Outcome.failure(claimed.job, 0.0, exc)
            with self._state:
                self._in_hand.pop(claimed.job.id, None)
                self._started.discard(claimed.job.id)
                abandoned = claimed.job.id in self._abandoned
                self._free_slots += 1
                self._state.notify_all()
            if not abandoned:
                self._outcomes.put(outcome)

    def _run_job(self, claimed: ClaimedJob) -> Outcome:
        job = claimed.job
        task = self.app.tasks[job.task_identifier]
        hooks = self.app.hooks
        started = time.perf_counter()
        try:
            payload = task.codec.decode(claimed.payload)
        except PayloadError as exc:
            # The payload will never decode, however often we retry: fail it for good.
            return Outcome.failure(job, _ms_since(started), exc, permanent=True)
        if hooks.has("before_job_run"):
            raw = msgspec.json.decode(claimed.payload)
            decision = hooks.decide("before_job_run", (Skip, Fail), job, raw)
            if isinstance(decision, Skip):
                return Outcome(job, _ms_since(started))
            if isinstance(decision, Fail):
                return Outcome(job, _ms_since(started), decision.message)
        hooks.notify("on_job_started", job)
        try:
            task.call(payload, JobContext(job, self.app, self.worker_id))
        except BaseException as exc:
            outcome = Outcome.failure(job, _ms_since(started), exc)
            raised: BaseException | None = exc
        else:
            outcome, raised = Outcome(job, _ms_since(started)), None
        if hooks.has("after_job_run"):
            result = JobResult(outcome.duration_ms, outcome.error, raised)
            decision = hooks.decide("after_job_run", (Complete, Fail), job, result, every=True)
            if isinstance(decision, Complete):
                return Outcome(job, outcome.duration_ms)
            if isinstance(decision, Fail):
                return Outcome(job, outcome.duration_ms, decision.message)
        return outcome

    # -- recording outcomes -----------------------------------------------------------

    def _complete_loop(self) -> None:
        finished = False
        while not finished:
            first = self._outcomes.get()
            batch: list[Outcome] = []
            if first is None:
                finished = True
            else:
                batch.append(first)
            # Whatever else is already waiting goes in the same statement: no delay
            # when idle, large batches under load.
            while len(batch) < MAX_OUTCOME_BATCH and not finished:
                try:
                    more = self._outcomes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    finished = True
                else:
                    batch.append(more)
            if batch:
                try:
                    self._write_outcomes(batch)
                except Exception:  # the completer must outlive any one batch
                    logger.exception("Recording %d job outcome(s) failed", len(batch))
                finally:
                    self._settle(batch)
                # Plugins hear of outcomes once they are recorded and settled, so a slow
                # hook delays no bookkeeping.
                for outcome in batch:
                    self._report(outcome)

    def _write_outcomes(self, batch: list[Outcome]) -> None:
        """Write a batch, retrying while the database is unreachable. A batch the database
        refuses outright is written one outcome at a time, so one bad row (an error text
        it won't store) cannot hold back the others."""
        attempt = 0
        while True:
            try:
                self._write_batch(batch, self._complete_conn.get())
                return
            except psycopg.OperationalError as exc:
                if self._forced.is_set():
                    logger.error(
                        "Could not record the outcome of %d job(s) before stopping (%s); "
                        "they stay locked by %s until recovered",
                        len(batch),
                        exc,
                        self.worker_id,
                    )
                    return
                delay = backoff_delay(attempt)
                attempt += 1
                logger.warning(
                    "Recording %d job outcome(s) failed (%s); retrying in %.1f s",
                    len(batch),
                    exc,
                    delay,
                )
                self._forced.wait(delay)
            except psycopg.Error as exc:
                if len(batch) == 1:
                    self._write_fallback(batch[0], exc)
                    return
                for outcome in batch:
                    self._write_outcomes([outcome])
                return

    def _write_batch(self, batch: list[Outcome], conn: Connection) -> None:
        store = self.app.store
        successes = [o.job.id for o in batch if o.error is None]
        failures = [(o.job.id, o.error, o.permanent) for o in batch if o.error is not None]
        if successes:
            store.complete_jobs(successes, worker_id=self.worker_id, conn=conn)
        if failures:
            store.fail_jobs(failures, worker_id=self.worker_id, conn=conn)
        for outcome in batch:
            outcome.log()

    def _report(self, outcome: Outcome) -> None:
        """Tell the plugins how a recorded job ended."""
        hooks, job, error = self.app.hooks, outcome.job, outcome.error
        if error is None:
            hooks.notify("on_job_completed", job, outcome.duration_ms)
            return
        final = outcome.permanent or job.attempts >= job.max_attempts
        hooks.notify("on_job_failed", job, error, not final)
        if final:
            hooks.notify("on_job_permanently_failed", job, error)

    def _write_fallback(self, outcome: Outcome, exc: psycopg.Error) -> None:
        """Record a failure whose own text the database refused, with a plain message."""
        logger.error("The database refused the outcome of job %d: %s", outcome.job.id, exc)
        replacement = Outcome(
            outcome.job,
            outcome.duration_ms,
            f"pgworker could not store this job's error ({type(exc).__name__})",
        )
        self._write_batch([replacement], self._complete_conn.get())

    def _settle(self, batch: list[Outcome]) -> None:
        with self._state:
            self._unsettled -= len(batch)
            # Set under the lock, so a fetch loop that sees nothing unsettled also sees
            # the wake-up (a queue this batch unlocked may hold a runnable job).
            self._wake.set()
            self._state.notify_all()

    # -- maintenance ------------------------------------------------------------------

    def _maintenance_loop(self) -> None:
        delay = random.uniform(0, FIRST_RESET_WITHIN)
        while not self._stopping.wait(delay):
            self._reset_stale_locks()
            delay = random.uniform(*RESET_INTERVAL)

    def _reset_stale_locks(self) -> None:
        try:
            self.app.store.reset_stale_locks()
        except psycopg.Error as exc:
            logger.warning("Resetting stale locks failed: %s", exc)

    # -- shutdown ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._state:
            waiting = [i for i in self._in_hand if i not in self._started]
            self._abandoned.update(waiting)
        if waiting:  # prefetched, never started: back to the queue as they were
            self._give_back(waiting, interrupted=False)
        deadline = time.monotonic() + self.app.shutdown_grace_period
        with self._state:
            while self._started and not self._forced.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(min(remaining, 0.1))
            cut_off = [self._in_hand[job_id].job for job_id in self._started]
            self._abandoned.update(job.id for job in cut_off)
        if cut_off:
            self._give_back([job.id for job in cut_off], interrupted=True)
            for job in cut_off:
                self.app.hooks.notify("on_job_interrupted", job, "shutdown")
        for _ in range(self.concurrency):
            self._work.put(None)
        self._outcomes.put(None)
        if self._listener is not None:
            self._listener.stop()
        # The completer comes first in _helpers: it writes every outcome queued before
        # the sentinel, so nothing that finished is lost. The others only need to stop.
        completer, *others = self._helpers
        forced_at: float | None = None
        while completer.is_alive():
            completer.join(0.2)
            if self._forced.is_set():
                forced_at = forced_at or time.monotonic()
                if time.monotonic() - forced_at > FORCED_COMPLETER_WAIT:
                    logger.error("Stopping without the last outcomes: a plugin hook is stuck")
                    break
        for thread in others:
            thread.join(timeout=5.0)
        self._fetch_conn.close()
        self._complete_conn.close()
        try:
            # Anything still locked by us now (an outcome the database never took) is
            # released rather than left for the 4-hour reset.
            self.app.store.unlock_worker(self.worker_id)
        except psycopg.Error as exc:
            logger.warning("Could not release the locks of %s: %s", self.worker_id, exc)
        logger.info("Worker %s stopped", self.worker_id)
        self.app.hooks.notify("on_worker_shutdown", self)

    def _give_back(self, job_ids: list[int], *, interrupted: bool) -> None:
        ids = ", ".join(f"#{i}" for i in job_ids)
        if interrupted:
            delay = self.app.interrupted_retry_delay
            logger.warning(
                "Giving back %d interrupted job(s) (%s); they run again in %.0f s",
                len(job_ids),
                ids,
                delay,
            )
        else:
            delay = 0.0
            logger.info("Giving back %d prefetched job(s) that never started", len(job_ids))
        message = INTERRUPTED_MESSAGE if interrupted else None
        for attempt in range(5):
            try:
                self.app.store.return_jobs(
                    job_ids, worker_id=self.worker_id, delay=delay, message=message
                )
                return
            except psycopg.Error as exc:
                logger.warning("Giving jobs back failed (%s)", exc)
                time.sleep(backoff_delay(attempt))
        logger.error("Jobs %s stay locked by %s until recovered", ids, self.worker_id)


class WorkerHandle:
    """A worker running in background threads (from ``App.start()``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"{worker.worker_id}-main", daemon=True
        )

    @classmethod
    def start(cls, worker: Worker) -> WorkerHandle:
        """Start ``worker.run()`` in a thread and return once it is fetching; an error
        while starting (no database, a bad schema revision) is raised here."""
        handle = cls(worker)
        handle._thread.start()
        while not worker._ready.wait(0.05):
            if not handle._thread.is_alive():
                handle._thread.join()
                raise handle.error or PgWorkerError("the worker stopped while starting")
        return handle

    def _run(self) -> None:
        try:
            self.worker.run(install_signal_handlers=False)
        except BaseException as exc:
            self.error = exc
            logger.exception("Worker %s crashed", self.worker.worker_id)

    @property
    def worker_id(self) -> str:
        """The lock-owner id of this worker (``locked_by`` of its jobs)."""
        return self.worker.worker_id

    def stop(self, timeout: float | None = None, *, force: bool = False) -> None:
        """Stop the worker and wait for it: running jobs finish, or after ``timeout``
        seconds (or at once with ``force``) are given back."""
        self.worker.request_stop(force=force)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.worker.request_stop(force=True)
            self._thread.join()
        if self.error is not None:
            raise PgWorkerError(f"the worker crashed: {self.error}") from self.error

    def __enter__(self) -> WorkerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
