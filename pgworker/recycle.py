"""Recycling: a worker that stops itself after a number of jobs or above a memory size."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the resident memory is read, in seconds.
MEMORY_CHECK_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class Recycle:
    """When a worker stops by itself so that a fresh process can take over (Celery's
    ``max_tasks_per_child`` and ``max_memory_per_child``): after ``max_jobs`` jobs have
    run, or once its resident memory is above ``max_memory_mb`` megabytes (MiB). The
    stop is the graceful one: running jobs finish, prefetched jobs go back to the queue.
    """

    max_jobs: int | None = None
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        if self.max_jobs is not None and self.max_jobs <= 0:
            raise ConfigurationError(f"max_jobs must be positive, got {self.max_jobs}")
        if self.max_memory_mb is not None and self.max_memory_mb <= 0:
            raise ConfigurationError(f"max_memory_mb must be positive, got {self.max_memory_mb}")

    @property
    def enabled(self) -> bool:
        """Whether either limit is set."""
        return self.max_jobs is not None or self.max_memory_mb is not None


#: No limit: the worker runs until it is stopped.
NO_RECYCLING = Recycle()


def resident_memory_mb() -> float:
    """This process's resident set size in MiB: the current one where /proc tells it
    (Linux), else the peak one from getrusage."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Kilobytes on Linux and the BSDs, bytes on macOS.
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Recycler:
    """Counts the jobs a worker ran and watches its memory; calls ``on_limit`` (once)
    when a limit of ``recycle`` is reached."""

    def __init__(
        self,
        recycle: Recycle,
        on_limit: Callable[[], None],
        *,
        memory: Callable[[], float] = resident_memory_mb,
    ) -> None:
        self.recycle = recycle
        self.on_limit = on_limit
        self.memory = memory
        self.jobs_done = 0
        self._lock = threading.Lock()
        self._reached = threading.Event()

    @property
    def reached(self) -> bool:
        """Whether a limit was reached (the worker is stopping for it)."""
        return self._reached.is_set()

    def counting(self, record: Callable[[T], None]) -> Callable[[T], None]:
        """``record`` (the completer's sink of outcomes), counting each outcome as a job
        done when there is a job limit (else ``record`` itself: nothing on the hot path)."""
        limit = self.recycle.max_jobs
        if limit is None:
            return record

        def counted(outcome: T) -> None:
            record(outcome)
            with self._lock:
                self.jobs_done += 1
                done = self.jobs_done
            if done >= limit:
                self._stop(f"{done} job(s) run, the limit is {limit}")

        return counted

    def run(self, stop: threading.Event) -> None:
        """The thread's body: read the resident memory every MEMORY_CHECK_INTERVAL until
        ``stop``, or until it is above the limit (there is nothing to do without one)."""
        limit = self.recycle.max_memory_mb
        if limit is None:
            return
        while not stop.wait(MEMORY_CHECK_INTERVAL):
            try:
                used = self.memory()
            except Exception:  # a failed reading must not end the worker
                logger.exception("Could not read the resident memory")
                continue
            if used > limit:
                self._stop(f"resident memory {used:.0f} MiB, the limit is {limit:g} MiB")
                return

    def _stop(self, reason: str) -> None:
        with self._lock:
            if self._reached.is_set():
                return
            self._reached.set()
        logger.info("Recycling this worker (%s): stopping gracefully", reason)
        self.on_limit()
