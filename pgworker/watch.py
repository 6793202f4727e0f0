"""Watch: the deadlines and cancel requests of a worker's running jobs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from .connections import OwnConnection
from .inflight import InFlight
from .running import RunningJob, cancel_reason
from .store import Store

logger = logging.getLogger(__name__)

#: How often deadlines are checked: the precision of a timeout.
TICK = 0.1


class Watch:
    """Asks running jobs to stop when their deadline passes or someone cancels them.

    Deadlines are checked every ``TICK``; cancel requests (a flag on the job's row, so
    they survive a lost notification) are read every ``poll_interval``, and at once when
    ``wake()`` says one was sent. A job still running ``hard_limit`` seconds past its
    deadline ignores being asked: ``on_overrun`` is told, once. Runs until ``stop`` is
    set and no job of the worker is running.
    """

    def __init__(
        self,
        store: Store,
        conninfo: str,
        inflight: InFlight,
        *,
        poll_interval: float,
        hard_limit: float,
        on_overrun: Callable[[RunningJob], None],
    ) -> None:
        self.store = store
        self.inflight = inflight
        self.poll_interval = poll_interval
        self.hard_limit = hard_limit
        self.on_overrun = on_overrun
        self._conn = OwnConnection(conninfo)
        self._wake = threading.Event()

    def wake(self) -> None:
        """A cancel request was sent (or the worker is stopping): read the requests now."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """The watch thread's loop."""
        next_poll = 0.0
        try:
            while True:
                running = self.inflight.running
                if stop.is_set() and not running:
                    return
                now = time.monotonic()
                for job in running:
                    self._check_deadline(job, now)
                if running and (self._wake.is_set() or now >= next_poll):
                    self._wake.clear()
                    next_poll = now + self.poll_interval
                    self._check_cancels(running)
                # With no job running a wake-up waits (set) for one to start: wait on the
                # stop signal then, which ends the loop at once, instead of spinning.
                (self._wake if running else stop).wait(TICK)
        finally:
            self._conn.close()

    def _check_deadline(self, job: RunningJob, now: float) -> None:
        left = job.seconds_left(now)
        if left is None or left > 0:
            return
        if not job.stopping:
            logger.warning(
                "Job #%d (%s) reached its timeout of %g s: asking it to stop",
                job.job.id,
                job.job.task_identifier,
                job.timeout,
            )
            job.expire()
        if -left > self.hard_limit and not job.overran:
            job.overran = True
            self.on_overrun(job)

    def _check_cancels(self, running: list[RunningJob]) -> None:
        by_id = {job.job.id: job for job in running if job.cancel_reason is None}
        if not by_id:
            return
        try:
            requests = self.store.cancel_requests(list(by_id), conn=self._conn.get())
        except (psycopg.Error, OSError) as exc:
            logger.warning("Reading cancel requests failed (%s); retrying", exc)
            return
        for job_id, last_error in requests.items():
            job = by_id[job_id]
            reason = cancel_reason(last_error)
            logger.warning(
                "Job #%d (%s) was cancelled: %s", job_id, job.job.task_identifier, reason
            )
            job.cancel(reason)
