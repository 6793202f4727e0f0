"""Completer: writes job outcomes in batches, then tells the plugins."""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import psycopg

from .connections import OwnConnection, backoff_delay
from .hooks import Hooks
from .inflight import InFlight
from .logs import gathered_lines
from .outcome import Outcome
from .store import INTERRUPTED_MESSAGE, Connection, Failure, Store

logger = logging.getLogger(__name__)

#: Upper bound on one batch of completions or failures written in a single statement.
MAX_OUTCOME_BATCH = 1000
#: How often an idle completer looks at the stop signal (the shutdown also wakes it,
#: ``Completer.wake``).
IDLE_CHECK = 0.05
#: How long a success may wait for the fetcher's next claim to complete it (when a claim
#: is on its way: the fetcher is not idle) before the completer writes it alone.
FOLD_WINDOW = 0.005
#: The plugin hooks ``report_outcome`` calls: without a listener, a batch skips it.
OUTCOME_HOOKS = ("on_job_completed", "on_job_failed", "on_job_permanently_failed")


class Completer:
    """Takes outcomes from the executors and records them in batches, one statement per
    batch: successes (a ``complete_jobs``), failures and snoozes (a ``fail_jobs``), and
    jobs given back by a forced stop are batched apart. A batch is written once its first
    outcome has waited ``complete_delay`` (``fail_delay``) seconds, or when it is full;
    with the default 0, whatever is waiting goes at once (no delay when idle, large
    batches under load). After a stop nothing waits: every batch is written as soon as
    it has an outcome, until every claimed job is settled, so a job still running then
    is recorded when it returns.

    Successes wait in ``Successes`` for the fetcher's next claim, which completes them
    in its own statement (``take_successes``; one commit per claim cycle instead of two)
    and hands them back (``recorded``, or ``retry`` if its statement failed). The
    completer writes them itself once they have waited ``FOLD_WINDOW`` seconds with no
    claim coming for them, or at once if the fetcher is idle (``claim_expected``) and
    ``complete_delay`` is 0.

    A batch that hits a lost connection is retried until it is written: an outcome is
    never dropped while the process lives (if it exits first, the job is given back and
    runs again). A retry after a write whose answer was lost does nothing twice: each
    statement only touches jobs still locked by this worker."""

    def __init__(
        self,
        store: Store,
        conninfo: str,
        worker_id: str,
        hooks: Hooks,
        inflight: InFlight,
        *,
        on_settled: Callable[[], None],
        interrupted_retry_delay: float = 0.0,
        complete_delay: float = 0.0,
        fail_delay: float = 0.0,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.hooks = hooks
        self.inflight = inflight
        self.on_settled = on_settled
        self.interrupted_retry_delay = interrupted_retry_delay
        self.delays = {Kind.COMPLETE: complete_delay, Kind.FAIL: fail_delay, Kind.RETURN: 0.0}
        #: Whether the fetcher is about to claim (it takes the waiting successes then);
        #: the worker sets it to the fetcher's ``claims_soon``.
        self.claim_expected: Callable[[], bool] = lambda: False
        self.successes = Successes()
        # None wakes the completer to look at the stop signal and the successes; a
        # Recorded brings successes the fetcher has completed.
        self.outcomes: queue.SimpleQueue[Outcome | Recorded | None] = queue.SimpleQueue()
        self._conn = OwnConnection(conninfo)

    def put(self, outcome: Outcome) -> None:
        """Queue an outcome for writing."""
        if outcome.error is not None:
            self.outcomes.put(outcome)
        elif self.successes.add(outcome):  # the first to wait: the completer times it
            self.outcomes.put(None)

    def take_successes(self) -> list[Outcome]:
        """Take the successes waiting to be written (at most ``MAX_OUTCOME_BATCH``), for
        a statement of the fetcher's; it hands them back with ``recorded`` or ``retry``."""
        return self.successes.take(MAX_OUTCOME_BATCH)

    def recorded(self, outcomes: list[Outcome]) -> None:
        """These successes were written by someone else (the fetcher's claim): log, settle
        and report them as if written here."""
        self.outcomes.put(Recorded(outcomes))

    def retry(self, outcomes: list[Outcome]) -> None:
        """These taken successes were not written (the statement failed): write them here,
        with the completer's retries."""
        self.outcomes.put(Recorded(outcomes, written=False))

    def wake(self) -> None:
        """Look at the stop signal (and the waiting successes) now instead of at the next
        ``IDLE_CHECK``."""
        self.outcomes.put(None)

    def run(self, stop: threading.Event) -> None:
        """Write outcomes until ``stop`` is set and every claimed job is settled."""
        pending: dict[Kind, list[Outcome]] = {}
        due: dict[Kind, float] = {}  # when each pending batch is written (time.monotonic())

        def add(item: Outcome | Recorded | None) -> None:
            if item is None:  # a wake-up: the loop looks at the stop signal
                return
            if isinstance(item, Recorded):
                if item.written:
                    self._recorded(item.outcomes)
                else:
                    self._flush(item.outcomes)
                return
            kind = Kind.of(item)
            batch = pending.setdefault(kind, [])
            batch.append(item)
            if kind not in due:
                due[kind] = time.monotonic() + (0.0 if stop.is_set() else self.delays[kind])

        try:
            while True:
                now = time.monotonic()
                for kind in [k for k, at in due.items() if at <= now or stop.is_set()]:
                    del due[kind]
                    self._flush(pending.pop(kind))
                successes_at = self._successes_due(stop.is_set())
                if successes_at is not None and successes_at <= now:
                    self._flush(self.successes.take(MAX_OUTCOME_BATCH))
                    successes_at = self._successes_due(stop.is_set())
                idle = not due and successes_at is None
                if idle and stop.is_set() and not self.inflight.unsettled:
                    return
                times = [*due.values(), *([] if successes_at is None else [successes_at])]
                # Never longer than IDLE_CHECK: a stop must cut a batch's wait short.
                wait = min(min(times) - now, IDLE_CHECK) if times else IDLE_CHECK
                try:
                    add(self.outcomes.get(timeout=max(wait, 0.0)))
                except queue.Empty:
                    continue
                # Whatever else is already waiting joins its batch.
                while True:
                    try:
                        add(self.outcomes.get_nowait())
                    except queue.Empty:
                        break
                for kind, batch in pending.items():
                    if len(batch) >= MAX_OUTCOME_BATCH:
                        due[kind] = now  # full: written on the next turn
        finally:
            self._conn.close()

    def _successes_due(self, stopping: bool) -> float | None:
        """When the completer writes the waiting successes itself (time.monotonic());
        None if none waits."""
        since = self.successes.since
        if since is None:
            return None
        if stopping:
            return since
        delay = self.delays[Kind.COMPLETE]
        return since + (max(delay, FOLD_WINDOW) if self.claim_expected() else delay)

    def _flush(self, outcomes: list[Outcome]) -> None:
        """Write a batch (in parts of MAX_OUTCOME_BATCH), count it settled, then tell the
        plugins."""
        for start in range(0, len(outcomes), MAX_OUTCOME_BATCH):
            batch = outcomes[start : start + MAX_OUTCOME_BATCH]
            try:
                self._write(batch)
            except Exception:  # the completer must outlive any one batch
                logger.exception("Recording %d job outcome(s) failed", len(batch))
            finally:
                self._settle(batch)

    def _recorded(self, batch: list[Outcome]) -> None:
        """The steps after writing, for a batch written by the fetcher."""
        log_outcomes(batch)
        self._settle(batch)

    def _settle(self, batch: list[Outcome]) -> None:
        """Count a written (or given up) batch settled, then tell the plugins."""
        # Wake the fetcher before counting the batch settled: a run-once fetcher that
        # sees nothing unsettled then also sees the wake-up (a queue this batch unlocked
        # may hold a runnable job).
        self.on_settled()
        self.inflight.settled([o.job.id for o in batch])
        # Plugins hear of outcomes once they are recorded and settled, so a slow hook
        # delays no bookkeeping.
        if self.hooks.listens(*OUTCOME_HOOKS):
            for outcome in batch:
                self._report(outcome)

    def _write(self, batch: list[Outcome], *, replacing: bool = False) -> None:
        """Write a batch, retrying while the database is unreachable. A batch the database
        refuses outright is written one outcome at a time, so one bad row (an error text
        it won't store) cannot hold back the others; an outcome refused alone is written
        as a plain failure instead (``replacing``: this is that failure, refused too,
        which raises)."""
        attempt = 0
        while True:
            try:
                self._write_batch(batch, self._conn.get())
                return
            except psycopg.OperationalError as exc:
                delay = backoff_delay(attempt)
                attempt += 1
                logger.warning(
                    "Recording %d job outcome(s) failed (%s); retrying in %.1f s",
                    len(batch),
                    exc,
                    delay,
                )
                time.sleep(delay)
            except Exception as exc:  # refused, or unsendable (a text psycopg can't encode)
                if len(batch) == 1:
                    if replacing:
                        raise
                    self._write([self._replacement(batch[0], exc)], replacing=True)
                    return
                for outcome in batch:
                    try:
                        self._write([outcome])
                    except Exception:  # the others still go in
                        logger.exception(
                            "Recording the outcome of job %d failed: it stays locked by this "
                            "worker until it stops",
                            outcome.job.id,
                        )
                return

    def _write_batch(self, batch: list[Outcome], conn: Connection) -> None:
        successes = [o.job.id for o in batch if o.error is None]
        failures = [failure_record(o) for o in batch if o.error is not None and not o.interrupted]
        interrupted = [o.job for o in batch if o.interrupted]
        if successes:
            self.store.complete_jobs(successes, worker_id=self.worker_id, conn=conn)
        if failures:
            self.store.fail_jobs(failures, worker_id=self.worker_id, conn=conn)
        if interrupted:
            self.store.return_jobs(
                [job.id for job in interrupted],
                worker_id=self.worker_id,
                delay=self.interrupted_retry_delay,
                message=INTERRUPTED_MESSAGE,
                locked_ats=[job.locked_at for job in interrupted],
                conn=conn,
            )
        log_outcomes(batch)

    def _replacement(self, outcome: Outcome, exc: Exception) -> Outcome:
        """A plain failure for an outcome the database refused (a failure whose text it
        won't store, a success it won't delete: a trigger, a permission), saying which."""
        logger.error("The database refused the outcome of job %d: %s", outcome.job.id, exc)
        what = "success" if outcome.error is None else "error"
        return Outcome(
            outcome.job,
            outcome.duration_ms,
            f"pgworker could not store this job's {what} ({type(exc).__name__})",
        )

    def _report(self, outcome: Outcome) -> None:
        report_outcome(self.hooks, outcome)


class Successes:
    """The successes waiting to be written, shared by the executors (``add``), the
    fetcher and the completer (``take``: whoever takes them writes them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        #: When the oldest waiting success arrived (time.monotonic()); None if none waits.
        self.since: float | None = None

    def add(self, outcome: Outcome) -> bool:
        """Add a success; True if it is the only one waiting."""
        with self._lock:
            self._outcomes.append(outcome)
            if len(self._outcomes) > 1:
                return False
            self.since = time.monotonic()
            return True

    def take(self, most: int) -> list[Outcome]:
        """Take up to ``most`` waiting successes, oldest first."""
        with self._lock:
            taken, self._outcomes = self._outcomes[:most], self._outcomes[most:]
            self.since = time.monotonic() if self._outcomes else None
            return taken


class Recorded(NamedTuple):
    """Successes the fetcher took (``Completer.take_successes``), coming back: written
    with its claim, or to be written by the completer (``written`` False)."""

    outcomes: list[Outcome]
    written: bool = True


class Kind(enum.Enum):
    """Which statement records an outcome: outcomes of one kind are batched together."""

    COMPLETE = "complete"
    FAIL = "fail"
    RETURN = "return"

    @staticmethod
    def of(outcome: Outcome) -> Kind:
        """The kind of ``outcome``."""
        if outcome.interrupted:
            return Kind.RETURN
        return Kind.COMPLETE if outcome.error is None else Kind.FAIL


def log_outcomes(batch: list[Outcome]) -> None:
    """Log each outcome's line, in one write for the batch rather than one per job."""
    with gathered_lines():
        for outcome in batch:
            outcome.log()


def failure_record(outcome: Outcome) -> Failure:
    """How the store records a failed (or snoozed) outcome."""
    return Failure(
        outcome.job.id,
        None if outcome.snoozed else outcome.error,
        permanent=outcome.permanent,
        refund=outcome.snoozed,
        delay=outcome.retry_delay,
        run_at=outcome.retry_at,
        payload=outcome.payload,
        locked_at=outcome.job.locked_at,
    )


def report_outcome(hooks: Hooks, outcome: Outcome) -> None:
    """Tell the plugins how a recorded job ended (nothing for an interrupted or snoozed
    one: the shutdown, or ``after_job_run``, told them)."""
    job, error = outcome.job, outcome.error
    if outcome.interrupted or outcome.snoozed:
        return
    if error is None:
        hooks.job_completed(job, outcome.duration_ms)
        return
    final = outcome.permanent or job.attempts >= job.max_attempts
    hooks.job_failed(job, error, will_retry=not final)
    if final:
        hooks.job_permanently_failed(job, error)
