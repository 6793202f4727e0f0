"""InFlight: the jobs a worker holds, from claim to recorded outcome, and its free slots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .running import RunningJob
from .store import ClaimedJob

#: The longest room() sleeps between two looks at the slots, wake-ups or not.
ROOM_RECHECK = 1.0


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
    back), as ``expire()`` does those that waited too long: whoever picks one of them up
    later finds it gone.

    Two conditions share one lock: ``_room`` wakes the fetcher waiting in ``room()``,
    and only once what it waits for may be there (a finished job that leaves fewer free
    slots than it needs wakes nobody: one wake-up per batch, not per job); ``_changed``
    wakes the other waiters (``wait_running_done``, ``wait_settled``).
    """

    def __init__(self, capacity: int, *, async_room: Callable[[], int] | None = None) -> None:
        self.capacity = capacity
        self.async_room = async_room
        lock = threading.Lock()
        self._changed = threading.Condition(lock)
        self._room = threading.Condition(lock)
        # What room() waits for, while it waits: (sync slots needed, finishes to pass).
        self._wanted: tuple[int, int] | None = None
        self._waiting: dict[int, ClaimedJob] = {}  # in claim order
        self._claimed_at: dict[int, float] = {}  # of the waiting jobs, on time.monotonic()
        self._running: dict[int, RunningJob] = {}
        self._unsettled: set[int] = set()
        self._async: set[int] = set()  # the waiting or running jobs that are async
        self._starting = True  # False once the worker stops: no job starts after that
        #: How many jobs' code has returned so far.
        self.finishes = 0

    def room(
        self,
        need: int,
        stop: threading.Event,
        until: float | None = None,
        *,
        after_finishes: int = -1,
    ) -> Room:
        """Wait until at least ``need`` sync slots or one async slot are free; return
        how many of each the worker can take (sync slots only if ``need`` are free and
        more than ``after_finishes`` jobs have finished; nothing once ``stop`` is set, or
        at ``until`` on time.monotonic())."""
        with self._room:
            try:
                while not stop.is_set():
                    free = self._free()
                    sync = free if free >= need and self.finishes > after_finishes else 0
                    async_ = self.async_room() if self.async_room is not None else 0
                    if sync or async_:
                        return Room(sync, async_)
                    self._wanted = (need, after_finishes)
                    # Woken when room may have appeared; the re-check every
                    # ROOM_RECHECK seconds is a backstop against a wake-up missed.
                    left = ROOM_RECHECK if until is None else until - time.monotonic()
                    if left <= 0:
                        break
                    self._room.wait(min(left, ROOM_RECHECK))
            finally:
                self._wanted = None
        return Room(0, 0)

    def _free(self) -> int:
        """Free sync slots (the lock held)."""
        return self.capacity - (len(self._waiting) + len(self._running) - len(self._async))

    def claimed(self, jobs: list[ClaimedJob], *, is_async: bool = False) -> None:
        """Record newly claimed jobs as waiting."""
        now = time.monotonic()
        with self._changed:
            for claimed in jobs:
                self._waiting[claimed.job.id] = claimed
                self._claimed_at[claimed.job.id] = now
                self._unsettled.add(claimed.job.id)
                if is_async:
                    self._async.add(claimed.job.id)

    def start(self, claimed: ClaimedJob, timeout: float | None) -> RunningJob | None:
        """Move a waiting job to running, with its deadline ``timeout`` seconds from now;
        None if it is not waiting as ``claimed`` any more (a stop or its TTL gave it
        back, maybe to be claimed again since) or the worker is stopping."""
        job_id = claimed.job.id
        with self._changed:
            if not self._starting or self._waiting.get(job_id) is not claimed:
                return None
            del self._waiting[job_id]
            del self._claimed_at[job_id]
            running = self._running[job_id] = RunningJob(claimed.job, timeout)
            return running

    def finished(self, job_id: int) -> None:
        """The job's code returned: its slot is free (its outcome is not written yet)."""
        with self._changed:
            self._running.pop(job_id, None)
            was_async = job_id in self._async
            self._async.discard(job_id)
            self.finishes += 1
            wanted = self._wanted
            # An async job frees an event-loop slot, which room() asks async_room about.
            if wanted is not None and (
                was_async or (self._free() >= wanted[0] and self.finishes > wanted[1])
            ):
                self._room.notify()
            if not self._running:  # what wait_running_done waits for
                self._changed.notify_all()

    def slot_freed(self) -> None:
        """An event-loop slot came free without a job finishing (a reserved slot that no
        job took): wake the fetcher if it waits for room."""
        with self._room:
            if self._wanted is not None:
                self._room.notify()

    def settled(self, job_ids: list[int]) -> None:
        """The outcomes of these jobs were written (or given up on)."""
        with self._changed:
            self._unsettled.difference_update(job_ids)
            if not self._unsettled:  # what wait_settled waits for
                self._changed.notify_all()

    def stop_starting(self) -> None:
        """From now on no job starts: a stop was asked for. Jobs claimed meanwhile (a
        claim may be in flight) wait for ``close()`` to take them out; so once this has
        returned, the running jobs only get fewer."""
        with self._changed:
            self._starting = False

    def close(self) -> list[ClaimedJob]:
        """Stop any job from starting; return the waiting ones (to give back), which
        count as settled from now on."""
        with self._changed:
            self._starting = False
            return self._take_waiting(list(self._waiting))

    def oldest_claim(self) -> float | None:
        """When the job that has waited longest was claimed (time.monotonic()); None
        if no job waits."""
        with self._changed:
            first = next(iter(self._waiting), None)
            return None if first is None else self._claimed_at[first]

    def expire(self, claimed_before: float) -> list[ClaimedJob]:
        """Take out the jobs still waiting that were claimed before ``claimed_before``
        (time.monotonic()), to give back; they count as settled from now on."""
        with self._changed:
            old = []
            for job_id in self._waiting:  # in claim order: stop at the first young one
                if self._claimed_at[job_id] >= claimed_before:
                    break
                old.append(job_id)
            return self._take_waiting(old) if old else []

    def _take_waiting(self, job_ids: list[int]) -> list[ClaimedJob]:
        taken = [self._waiting.pop(i) for i in job_ids]
        for job_id in job_ids:
            del self._claimed_at[job_id]
        self._unsettled.difference_update(job_ids)
        self._async.difference_update(job_ids)
        self._notify_all()
        return taken

    def wake(self) -> None:
        """Wake every waiter so it can look at the stop signal."""
        with self._changed:
            self._notify_all()

    def _notify_all(self) -> None:
        self._room.notify_all()
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
