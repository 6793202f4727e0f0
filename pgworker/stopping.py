"""The worker's way out: give back what never started, wait for what runs (within the
grace period), then stop the threads and leave the registry."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from abc import abstractmethod
from typing import TYPE_CHECKING

from .giveback import GiveBack
from .hooks import Hooks, WorkerInfo
from .inflight import InFlight
from .recovery import Heartbeat
from .settings import WorkerSettings

if TYPE_CHECKING:
    from .async_jobs import AsyncJobs

logger = logging.getLogger(__name__)

#: After a forced stop, how long the completer may take to finish (its plugin hooks).
FORCED_COMPLETER_WAIT = 5.0


class Stopping:
    """The shutdown sequence of a Worker (the stop column of its thread table)."""

    worker_id: str
    settings: WorkerSettings
    hooks: Hooks
    inflight: InFlight
    give_back: GiveBack
    async_jobs: AsyncJobs | None
    heartbeat: Heartbeat | None
    _forced: threading.Event
    #: Set once the shutdown is over: threads stopped, registry left (or given up on).
    _finished: threading.Event
    _threads: list[threading.Thread]

    @property
    @abstractmethod
    def info(self) -> WorkerInfo:
        """What plugins are told about this worker."""

    @abstractmethod
    def request_stop(self, *, force: bool = False) -> None:
        """Ask the worker's threads to stop."""

    @abstractmethod
    def _wake_idle_threads(self) -> None:
        """Wake the threads that wait for work (executors, completer, watch) to see the
        stop signal now rather than at their next poll; only once nothing more is
        claimed."""

    def _shutdown(self) -> None:
        try:
            self._stop_or_hand_over()
        except BaseException:
            self._finished.set()  # no finish to wait for
            raise

    def _stop_or_hand_over(self) -> None:
        """Stop at once, or hand the rest over to a thread that waits for the jobs still
        running after a forced stop or the grace period."""
        self.request_stop()
        waiting = self.inflight.close()
        if waiting:  # prefetched, never started: back to the queue as they were
            logger.info("Giving back %d prefetched job(s) that never started", len(waiting))
            self.give_back.jobs([c.job.id for c in waiting], interrupted=False)
        deadline = time.monotonic() + self.settings.shutdown_grace_period
        while not self._forced.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.inflight.wait_running_done(min(remaining, 0.1)):
                break
        still_running = self.inflight.running
        if not still_running:
            self._finish()
            return
        if self.async_jobs is not None:
            self.async_jobs.cancel_running()
        logger.warning(
            "Stopping without waiting for %d running job(s) (%s): they stay locked by %s, "
            "which keeps its heartbeat, until their code returns, and are given back if "
            "the process exits first",
            len(still_running),
            ", ".join(f"#{running.job.id}" for running in still_running),
            self.worker_id,
        )
        for running in still_running:
            self.hooks.job_interrupted(running.job, "shutdown")
        threading.Thread(target=self._finish, name=f"{self.worker_id}-finish", daemon=True).start()

    def _finish(self) -> None:
        """Wait for the last running job and the last outcome, then stop the threads,
        leave the registry and tell the plugins."""
        try:
            self._finish_steps()
        finally:
            self._finished.set()

    def _finish_steps(self) -> None:
        self.inflight.wait_running_done(timeout=None)
        done_at = time.monotonic()
        while not self.inflight.wait_settled(0.2):
            if self._forced.is_set() and time.monotonic() - done_at > FORCED_COMPLETER_WAIT:
                logger.error("Stopping without the last outcomes: a plugin hook is stuck?")
                break
        if self.async_jobs is not None:
            self.async_jobs.stop()
        self._wake_idle_threads()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.give_back.leave(registered=self.heartbeat is not None)
        atexit.unregister(self._give_back_at_exit)
        logger.info("Worker %s stopped", self.worker_id)
        self.hooks.worker_shutdown(self.info)

    def _give_back_at_exit(self) -> None:
        """The process is exiting with jobs not yet recorded: give them back (their code
        ends with the process) and leave the registry."""
        self.give_back.at_exit(self.inflight, registered=self.heartbeat is not None)
