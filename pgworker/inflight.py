"""InFlight: the jobs a worker holds, from claim to recorded outcome, and its free slots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .running import RunningJob
from .store import ClaimedJob


class Room(NamedTuple):
    """How many jobs of each kind the worker can take on now."""

    sync: int
    async_: int


class InFlight:
    """What the fetcher, the executors, the async jobs, the completer and the shutdown
    share.

    A claimed job is *waiting* until an executor (or the async jobs' thread) starts it,
    then *running* until its code returns; from claim until its outcome is written it is
    *unsettled*. Jobs of both kinds are counted alike, but only sync jobs take up the
    ``capacity`` (executor slots plus prefetch): async jobs take the slots of the event
    loop, which ``async_room`` reports. ``close()`` takes the waiting jobs out (to give
    back): whoever picks one of them up later finds it gone.
    """

    def __init__(self, capacity: int, *, async_room: Callable[[], int] | None = None) -> None:
        self.capacity = capacity
        self.async_room = async_room
        self._changed = threading.Condition()
        self._waiting: dict[int, ClaimedJob] = {}
        self._running: dict[int, RunningJob] = {}
        self._unsettled: set[int] = set()
        self._async: set[int] = set()  # the waiting or running jobs that are async

    def room(self, need: int, stop: threading.Event) -> Room:
        """Wait until at least ``need`` sync slots or one async slot are free; return
        how many of each the worker can take (sync slots only if ``need`` are free;
        nothing once ``stop`` is set)."""
        with self._changed:
            while not stop.is_set():
                held = len(self._waiting) + len(self._running) - len(self._async)
                free = self.capacity - held
                sync = free if free >= need else 0
                async_ = self.async_room() if self.async_room is not None else 0
                if sync or async_:
                    return Room(sync, async_)
                self._changed.wait()
        return Room(0, 0)

    def claimed(self, jobs: list[ClaimedJob], *, is_async: bool = False) -> None:
        """Record newly claimed jobs as waiting."""
        with self._changed:
            for claimed in jobs:
                self._waiting[claimed.job.id] = claimed
                self._unsettled.add(claimed.job.id)
                if is_async:
                    self._async.add(claimed.job.id)

    def start(self, job_id: int, timeout: float | None) -> RunningJob | None:
        """Move a waiting job to running, with its deadline ``timeout`` seconds from now;
        None if a stop gave it back first."""
        with self._changed:
            claimed = self._waiting.pop(job_id, None)
            if claimed is None:
                return None
            running = self._running[job_id] = RunningJob(claimed.job, timeout)
            return running

    def finished(self, job_id: int) -> None:
        """The job's code returned: its slot is free (its outcome is not written yet)."""
        with self._changed:
            self._running.pop(job_id, None)
            self._async.discard(job_id)
            self._changed.notify_all()

    def settled(self, job_ids: list[int]) -> None:
        """The outcomes of these jobs were written (or given up on)."""
        with self._changed:
            self._unsettled.difference_update(job_ids)
            self._changed.notify_all()

    def close(self) -> list[ClaimedJob]:
        """Stop any job from starting; return the waiting ones (to give back), which
        count as settled from now on."""
        with self._changed:
            waiting = list(self._waiting.values())
            self._waiting.clear()
            self._unsettled.difference_update(c.job.id for c in waiting)
            self._async.difference_update(c.job.id for c in waiting)
            self._changed.notify_all()
            return waiting

    def wake(self) -> None:
        """Wake every waiter so it can look at the stop signal."""
        with self._changed:
            self._changed.notify_all()

    @property
    def running(self) -> list[RunningJob]:
        """The jobs whose code is running now."""
        with self._changed:
            return list(self._running.values())

    @property
    def unsettled(self) -> list[int]:
        """The ids of claimed jobs with no recorded outcome yet."""
        with self._changed:
            return list(self._unsettled)

    def wait_running_done(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for every running job to
        return; True if none runs now."""
        return self._wait_for(lambda: not self._running, timeout)

    def wait_settled(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) until nothing is unsettled."""
        return self._wait_for(lambda: not self._unsettled, timeout)

    def _wait_for(self, done: Callable[[], bool], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True
