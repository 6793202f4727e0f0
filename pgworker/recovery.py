"""Recovery: a worker's heartbeat, the dead-worker sweep and the 4-hour stale-lock reset."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from .connections import OwnConnection
from .errors import ConfigurationError, PgWorkerError, WorkerIdInUseError
from .hooks import Hooks
from .store import Store
from .store_recovery import RUST_STALE_AFTER

logger = logging.getLogger(__name__)

#: graphile-worker's schedule for the 4-hour stale-lock reset: first within a minute of
#: start, then every 8 to 10 minutes.
FIRST_RESET_WITHIN = 60.0
RESET_INTERVAL = (480.0, 600.0)
#: A heartbeat must be at most this fraction of the stale threshold: one late or failed
#: beat must never make a live worker look dead.
MAX_HEARTBEAT_SHARE = 1 / 3
#: How soon a change ``Heartbeat.report`` makes to the registry metadata is written.
REPORT_WITHIN = 0.25


@dataclass(frozen=True, slots=True)
class Recovery:
    """How workers notice each other's death and give a dead worker's jobs back
    (``App(recovery=Recovery(...))``; ``Recovery(enabled=False)`` turns it off).

    Every worker heartbeats into the worker registry every ``heartbeat_interval``
    seconds; every ``sweep_interval`` seconds one worker (an advisory lock picks it)
    gives back the jobs of pgworker workers silent for more than ``stale_after`` seconds,
    refunding the attempt. A job whose worker died with it more than ``max_recoveries``
    times in a row is failed instead. With the defaults a crashed worker's jobs run again
    within a minute of the crash.

    The heartbeat is a thread: C code that holds the GIL for longer than ``stale_after``
    (a long computation in an extension that doesn't release it) silences it, and the
    worker's jobs may then be given to others while they still run.
    """

    enabled: bool = True
    heartbeat_interval: float = 10.0
    stale_after: float = 45.0
    sweep_interval: float = 15.0
    max_recoveries: int = 3

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "stale_after", "sweep_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"Recovery.{name} must be positive")
        if self.heartbeat_interval > self.stale_after * MAX_HEARTBEAT_SHARE:
            raise ConfigurationError(
                f"Recovery.stale_after ({self.stale_after} s) must be at least three "
                f"heartbeat intervals ({self.heartbeat_interval} s), so that one late "
                "heartbeat never makes a live worker look dead"
            )
        if self.max_recoveries < 0:
            raise ConfigurationError("Recovery.max_recoveries must be >= 0")


def worker_metadata(worker_id: str, tasks: Sequence[str], version: str) -> dict[str, Any]:
    """What a pgworker worker says about itself in the registry. ``runtime`` is how
    sweepers tell pgworker's rows (pgworker's threshold) from Rust's (Rust's)."""
    return {
        "runtime": "pgworker",
        "version": version,
        "worker_id": worker_id,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "tasks": sorted(tasks),
    }


class Heartbeat:
    """Keeps this worker's registry row fresh while it fetches, and afterwards for as
    long as any of its jobs still runs in this process (``still_running``)."""

    def __init__(
        self,
        store: Store,
        conninfo: str,
        worker_id: str,
        metadata: dict[str, Any],
        interval: float,
        *,
        still_running: Callable[[float], bool],
        stale_after: float = 45.0,
        made_up_id: bool = False,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.made_up_id = made_up_id
        self.metadata = metadata
        self.interval = interval
        self.stale_after = stale_after
        self.still_running = still_running
        self._conn = OwnConnection(conninfo)
        self._reported = threading.Event()
        self.beats = 0

    def report(self, key: str, value: Any) -> None:
        """Set ``key`` of this worker's registry metadata; the row is written within
        ``REPORT_WITHIN`` seconds instead of at the next beat. Any thread may call it."""
        self.metadata = {**self.metadata, key: value}  # replaced whole: beats read it
        self._reported.set()

    def register(self, conn: OwnConnection | None = None) -> None:
        """The first beat, at start (on ``conn`` if given, else on the heartbeat's own
        connection, closed if this fails): raises if the registry can't be written, and
        WorkerIdInUseError if a live worker is registered under this worker's id. Jobs a
        dead worker of the same id left locked are given back (graphile-worker's
        ``force_unlock_workers``: the attempt they took stays counted), unless the id
        was made up for this worker (``made_up_id``) and so has no predecessor."""
        own = conn or self._conn
        try:
            released = self.store.register_worker(
                self.worker_id,
                self.metadata,
                stale_after=self.stale_after,
                release=not self.made_up_id,
                conn=own.get(),
            )
        except BaseException:
            own.close()
            raise
        if released is None:
            own.close()
            raise WorkerIdInUseError(
                f"worker id {self.worker_id!r} belongs to a live worker (it heartbeat in the "
                f"last {self.stale_after:g} s): give this worker another id, or stop that one"
            )
        if released:
            logger.warning(
                "Gave back %d job(s) that an earlier worker with id %s left locked",
                released,
                self.worker_id,
            )
        self.beats = 1

    def run(self, stop: threading.Event) -> None:
        """Beat every ``interval`` until ``stop`` and nothing of ours is running."""
        try:
            while True:
                if stop.is_set():
                    # still_running waits up to the interval for the last job to return.
                    if not self.still_running(self.interval):
                        return
                elif self._sleep(stop):
                    continue
                self._beat()
        finally:
            self._conn.close()

    def _sleep(self, stop: threading.Event) -> bool:
        """Wait for the next beat: ``interval``, or less when a report is pending; True
        when ``stop`` was set meanwhile."""
        deadline = time.monotonic() + self.interval
        while not self._reported.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if stop.wait(min(remaining, REPORT_WITHIN)):
                return True
        return False

    def _beat(self) -> None:
        self._reported.clear()
        # A third of the slack between two beats and being taken for dead: a beat lost in
        # a silent network is given up on, and beaten again, well before that.
        timeout = max(0.5, (self.stale_after - self.interval) / 3)
        try:
            created = self.store.heartbeat(
                self.worker_id, self.metadata, conn=self._conn.get(), timeout=timeout
            )
        except Exception as exc:  # the heartbeat must outlive any one failure
            if isinstance(exc, TimeoutError):
                self._conn.discard()
            logger.warning("Heartbeat of %s failed (%s); retrying", self.worker_id, exc)
            return
        if created and self.beats:
            logger.error(
                "Worker %s was taken for dead (no heartbeat for too long: a paused process, "
                "or C code holding the GIL?); the jobs it held were given to other workers",
                self.worker_id,
            )
        self.beats += 1


class Sweeper:
    """Gives back the jobs of dead workers (every ``sweep_interval``, one sweeper at a
    time across the fleet) and runs graphile-worker's 4-hour reset for lock owners that
    never heartbeat (every 8 to 10 minutes).

    A database outage silences every worker's heartbeat at once: when it ends, each
    registry row looks as old as the outage, though the workers live. So a sweeper that
    lost the database itself sweeps again only ``stale_after`` seconds after its last
    failure, once the live workers have had time to beat; and it never sweeps the
    worker it belongs to (``worker_id``).
    """

    def __init__(
        self,
        store: Store,
        conninfo: str,
        recovery: Recovery,
        hooks: Hooks,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.recovery = recovery
        self.hooks = hooks
        self.worker_id = worker_id
        self._conn = OwnConnection(conninfo)
        self.sweeps = 0
        #: When this sweeper last failed to reach the database (time.monotonic()).
        self.last_failure: float | None = None

    def run(self, stop: threading.Event) -> None:
        """Sweep and reset on their schedules until ``stop`` is set."""
        interval = self.recovery.sweep_interval
        # Random first delays spread a fleet that started together.
        until_sweep = random.uniform(0, interval) if self.recovery.enabled else float("inf")
        until_reset = random.uniform(0, FIRST_RESET_WITHIN)
        try:
            while not stop.wait(min(until_sweep, until_reset)):
                elapsed = min(until_sweep, until_reset)
                until_sweep -= elapsed
                until_reset -= elapsed
                if until_sweep <= 0:
                    self.sweep()
                    until_sweep = interval * random.uniform(0.8, 1.2)
                if until_reset <= 0:
                    self.reset_stale_locks()
                    until_reset = random.uniform(*RESET_INTERVAL)
        finally:
            self._conn.close()

    def close(self) -> None:
        """Close the connection (after sweeping outside ``run``, as run-once workers do)."""
        self._conn.close()

    def sweep(self, conn: OwnConnection | None = None) -> None:
        """One sweep (on ``conn`` if given, else on the sweeper's own connection); errors
        are logged, never raised."""
        since_failure = self.seconds_since_failure()
        if since_failure is not None and since_failure < self.recovery.stale_after:
            logger.debug(
                "Not sweeping: this worker lost the database %.0f s ago, and live workers "
                "may not have beaten since",
                since_failure,
            )
            return
        try:
            result = self.store.sweep_dead_workers(
                threshold=self.recovery.stale_after,
                foreign_threshold=RUST_STALE_AFTER,
                max_recoveries=self.recovery.max_recoveries,
                self_id=self.worker_id,
                conn=(conn or self._conn).get(),
            )
        except Exception as exc:
            if isinstance(exc, psycopg.Error | PgWorkerError):
                self.last_failure = time.monotonic()
                logger.warning("Sweeping for dead workers failed: %s", exc)
            else:
                logger.exception("Sweeping for dead workers failed: %s", exc)
            return
        if result is None:
            logger.debug("Another worker is sweeping")
            return
        self.sweeps += 1
        if not result.dead:
            return
        for dead in result.dead:
            jobs = [r for r in result.recovered if r.worker_id == dead.worker_id]
            logger.warning(
                "Worker %s is dead (no heartbeat for %.0f s): gave back %d job(s)%s",
                dead.worker_id,
                dead.heartbeat_age,
                len(jobs),
                "".join(f" #{r.job_id}" for r in jobs[:20]),
            )
        for failed in (r for r in result.recovered if r.failed):
            logger.error(
                "Job #%d failed for good: its worker died while running it more than %d "
                "times in a row",
                failed.job_id,
                self.recovery.max_recoveries,
            )
        self.hooks.workers_recovered(
            [d.worker_id for d in result.dead], [r.job_id for r in result.recovered]
        )

    def seconds_since_failure(self) -> float | None:
        """Seconds since this sweeper last failed to reach the database (None: never)."""
        if self.last_failure is None:
            return None
        return time.monotonic() - self.last_failure

    def reset_stale_locks(
        self, *, report_unserved: bool = True, conn: OwnConnection | None = None
    ) -> None:
        """graphile-worker's 4-hour reset, and (``report_unserved``) a warning about jobs
        that no registered worker runs (on ``conn`` if given, else on the sweeper's own
        connection); errors are logged, never raised."""
        self.hooks.reset_locked_started()
        try:
            self.store.reset_stale_locks(conn=(conn or self._conn).get())
        except Exception as exc:  # the maintenance thread must outlive any one failure
            expected = isinstance(exc, psycopg.Error | PgWorkerError)
            (logger.warning if expected else logger.exception)(
                "Resetting stale locks failed: %s", exc
            )
            self.hooks.reset_locked_finished(str(exc).strip() or type(exc).__name__)
            return
        self.hooks.reset_locked_finished(None)
        if not report_unserved:
            return
        try:
            unserved = self.store.unserved_tasks(conn=(conn or self._conn).get())
        except psycopg.Error as exc:
            logger.warning("Looking for unserved tasks failed: %s", exc)
            return
        if unserved:
            logger.warning(
                "Jobs wait for tasks that no registered worker runs (a Node worker may: it "
                "doesn't register): %s",
                ", ".join(f"{task} ({count})" for task, count in unserved.items()),
            )
