"""GiveBack: returns a worker's jobs to the queue, and leaves the registry, when it stops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import psycopg

from .connections import backoff_delay, connect
from .errors import PgWorkerError
from .inflight import InFlight
from .store import INTERRUPTED_MESSAGE, Connection, Failure, Store

logger = logging.getLogger("pgworker.worker")

#: Tries before a give-back is left to a sweep.
GIVE_BACK_TRIES = 5


class GiveBack:
    """Gives jobs back on connections of its own (the pool may be closed by then): the
    attempt refunded; an *interrupted* job (its code was cut off) also waits
    ``interrupted_retry_delay`` seconds and says why in last_error. A job that had
    overrun its timeout is failed instead, so that a job that always hangs uses up its
    attempts rather than coming back for ever."""

    def __init__(
        self, store: Store, conninfo: str, worker_id: str, interrupted_retry_delay: float
    ) -> None:
        self.store = store
        self.conninfo = conninfo
        self.worker_id = worker_id
        self.interrupted_retry_delay = interrupted_retry_delay

    def jobs(self, job_ids: Sequence[int], *, interrupted: bool) -> None:
        """Give these jobs back (refunding the attempt)."""
        ids = ", ".join(f"#{i}" for i in job_ids)
        delay = self.interrupted_retry_delay if interrupted else 0.0
        if interrupted:
            logger.warning(
                "Giving back %d interrupted job(s) (%s); they run again in %.0f s",
                len(job_ids),
                ids,
                delay,
            )
        message = INTERRUPTED_MESSAGE if interrupted else None
        self._retrying(
            ids,
            lambda conn: self.store.return_jobs(
                job_ids, worker_id=self.worker_id, delay=delay, message=message, conn=conn
            ),
        )

    def overrun(self, failures: Sequence[tuple[int, str]]) -> None:
        """Fail jobs that overran their timeout (``(job id, message)``): retried by the
        usual rules, the attempt counted."""
        ids = ", ".join(f"#{i}" for i, _ in failures)
        logger.error("Failing %d job(s) that overran their timeout (%s)", len(failures), ids)
        self._retrying(
            ids,
            lambda conn: self.store.fail_jobs(
                [Failure(i, m) for i, m in failures], worker_id=self.worker_id, conn=conn
            ),
        )

    def at_exit(self, inflight: InFlight, *, registered: bool) -> None:
        """The process is exiting with jobs not yet recorded: give them back (their code
        ends with the process; one that overran its timeout is failed instead), release
        whatever else is still locked by this worker (a claim whose answer was lost, a
        give-back that failed), and leave the registry. Never raises (an exit hook)."""
        try:
            overran = {
                r.job.id: f"Timed out after {r.timeout:g} s and overran it: the worker "
                "exited to free its thread"
                for r in inflight.running
                if r.overran
            }
            if overran:
                self.overrun(list(overran.items()))
            held = [i for i in inflight.unsettled if i not in overran]
            if held:
                self.jobs(held, interrupted=True)
            with connect(self.conninfo) as conn:
                self.store.unlock_worker(self.worker_id, conn=conn)
                if registered:
                    self.store.deregister(self.worker_id, conn=conn)
        except Exception as exc:
            logger.warning("Could not leave the worker registry at exit: %s", exc)

    def leave(self, *, registered: bool) -> None:
        """After a clean stop: release anything still locked by this worker (an outcome
        the database never took) rather than leave it to a sweep, and leave the
        registry."""
        try:
            with connect(self.conninfo) as conn:
                self.store.unlock_worker(self.worker_id, conn=conn)
                if registered:
                    self.store.deregister(self.worker_id, conn=conn)
        except (psycopg.Error, PgWorkerError) as exc:
            logger.warning("Could not release the locks of %s: %s", self.worker_id, exc)

    def _retrying(self, ids: str, write: Callable[[Connection], None]) -> None:
        for attempt in range(GIVE_BACK_TRIES):
            try:
                with connect(self.conninfo) as conn:
                    write(conn)
                return
            except (psycopg.Error, PgWorkerError) as exc:
                logger.warning("Giving jobs back failed (%s)", exc)
                time.sleep(backoff_delay(attempt + 1))
        logger.error("Jobs %s stay locked by %s until a sweep recovers them", ids, self.worker_id)
