"""Fetcher: claims runnable jobs whenever the worker has room, and hands them out."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import psycopg

from .connections import OwnConnection, backoff_delay
from .hooks import Hooks
from .inflight import InFlight, Room
from .outcome import Outcome
from .settings import RefetchDelay
from .store import ClaimedJob, Store

logger = logging.getLogger(__name__)


def local_time() -> datetime:
    """This process's clock, for ``App(use_local_time=True)``."""
    return datetime.now(UTC)


class AsyncLane(Protocol):
    """Where the fetcher sends the jobs of async tasks (``AsyncJobs``): claimed against
    slots reserved on the event loop, one of which each job handed out takes."""

    def reserve(self, n: int) -> int:
        """Reserve up to ``n`` free slots; return how many were reserved."""
        ...

    def release(self, n: int) -> None:
        """Give back ``n`` reserved slots that no job took."""
        ...

    def submit(self, claimed: ClaimedJob) -> None:
        """Run a claimed job in one of the reserved slots."""
        ...


class Completions(Protocol):
    """Where the fetcher takes the successes its next claim completes (``Completer``),
    and hands them back."""

    def take_successes(self) -> list[Outcome]:
        """Take the successes waiting to be written."""
        ...

    def recorded(self, outcomes: list[Outcome]) -> None:
        """These successes were written with a claim."""
        ...

    def retry(self, outcomes: list[Outcome]) -> None:
        """These successes were not written: the claim failed."""
        ...


class RefetchPause:
    """The state of a ``RefetchDelay``: after a short fetch, when the next may start.
    Only the fetcher thread calls ``after_fetch`` and ``remaining``; ``notified`` comes
    from the listener."""

    def __init__(self, delay: RefetchDelay, batch: int) -> None:
        self.delay = delay
        self.max_abort = delay.max_abort_threshold or 5 * batch
        self._until = 0.0
        self._abort_at = 0.0
        self._notified = 0

    def after_fetch(self, claimed: int, asked: int) -> None:
        """Pause if the fetch came back short: ``threshold`` jobs or fewer, and fewer than
        ``asked``."""
        if claimed > self.delay.threshold or claimed >= asked:
            return
        self._notified = 0
        self._abort_at = random.random() * self.max_abort or float("inf")
        self._until = time.monotonic() + self.delay.duration * (0.5 + random.random())
        logger.debug("Refetch delay: %d job(s) fetched, pausing until %.3f", claimed, self._until)

    def notified(self) -> None:
        """A notification of a new job: enough of them end the pause."""
        self._notified += 1
        if self._until and self._notified >= self._abort_at:
            self._until = 0.0

    def remaining(self) -> float:
        """Seconds before the next fetch may start (0: now)."""
        if not self._until:
            return 0.0
        left = self._until - time.monotonic()
        if left <= 0:
            self._until = 0.0
            return 0.0
        return left


class Fetcher:
    """The claim loop: the local queue. With a prefetch buffer (``batch`` > 1) it claims
    only once there is room for a whole batch (fewer, larger claims); without one, as
    soon as an executor is free. Between claims that find nothing it sleeps until
    ``wake()`` (a notification, or a settled outcome that may have unlocked a queue) or
    the poll interval; after short fetches, a ``refetch_delay`` holds the next one back.
    Jobs that waited in the buffer for ``ttl`` seconds go back to the database (attempt
    refunded), as the whole buffer does when the worker stops (``Worker``'s shutdown).

    The jobs of sync tasks (``task_names``) are claimed against free executor slots and
    handed to ``hand_out``; those of async tasks (``async_task_names``), if any, against
    free event-loop slots and handed to ``async_lane``: one claim statement for each kind
    that has room (a worker without async tasks makes one, as it always did). A named
    queue stays serial across both kinds: a claim locks the queue of the job it takes,
    and the next claim, of either kind, skips locked queues. But each claim sees only its
    own kind's jobs, so in a queue that mixes sync and async tasks a job may run before
    an earlier job of the other kind (as between graphile-workers with different task
    lists).
    """

    def __init__(
        self,
        store: Store,
        conninfo: str,
        worker_id: str,
        hooks: Hooks,
        inflight: InFlight,
        *,
        task_names: dict[int, str],
        batch: int,
        poll_interval: float,
        forbidden_flags: Callable[[], Sequence[str] | None],
        hand_out: Callable[[ClaimedJob], None],
        async_task_names: dict[int, str] | None = None,
        async_lane: AsyncLane | None = None,
        use_local_time: bool = False,
        ttl: float | None = None,
        refetch_delay: RefetchDelay | None = None,
        completions: Completions | None = None,
    ) -> None:
        self.store = store
        self.completions = completions
        self.ttl = ttl
        self.refetch = None if refetch_delay is None else RefetchPause(refetch_delay, batch)
        self.use_local_time = use_local_time
        self.worker_id = worker_id
        self.hooks = hooks
        self.inflight = inflight
        self.task_names = task_names
        self.batch = batch
        self.poll_interval = poll_interval
        self.forbidden_flags = forbidden_flags
        self.hand_out = hand_out
        self.async_task_names = async_task_names or {}
        self.async_lane = async_lane
        self._conn = OwnConnection(conninfo)
        self._wake = threading.Event()
        self._unsure = False
        # After a TTL give-back: claim for executors only once one of them is done.
        self._after_finishes = -1
        self._once = False
        # Waiting for a wake-up or a poll, not about to claim: successes needn't wait.
        self._idle = True

    def claims_soon(self) -> bool:
        """Whether a claim is on its way (the fetcher waits for room, or claims), which
        completes the successes waiting by then; False while it waits for new jobs."""
        return not self._idle

    @property
    def connection(self) -> OwnConnection:
        """The connection this fetcher claims on; the worker's start-up statements run on
        it too, one connection fewer to open before the first claim."""
        return self._conn

    def wake(self, *, notification: bool = True) -> None:
        """Claim now instead of at the next poll (after a refetch delay, which enough
        ``notification`` wake-ups cut short). Other wake-ups (an outcome was recorded)
        are ignored with a refetch delay, except by a run-once worker: such a worker
        fetches when notified, when it has room and at each poll."""
        if self.refetch is not None:
            if notification:
                self.refetch.notified()
            elif not self._once:
                return
        self._wake.set()

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Claim until ``stop`` is set; with ``once``, return when nothing is runnable
        and nothing claimed is unsettled."""
        self._once = once
        self._idle = False
        attempt = 0
        try:
            while not stop.is_set():
                expiry = self._give_back_expired()
                room = self.inflight.room(
                    self.batch, stop, until=expiry, after_finishes=self._after_finishes
                )
                if stop.is_set():
                    return
                if not any(room) or self._paused(stop):
                    continue  # a prefetched job's time ran out, or room must be asked again
                self._wake.clear()
                try:
                    if self._unsure:
                        self._release_unheld()
                    claimed, more = self._claim(room)
                except Exception as exc:  # the loop must outlive any one failure
                    # A claim that failed on the wire, or whose rows could not be read,
                    # may have committed: until checked, this worker may hold locks it
                    # doesn't know of.
                    self._unsure = True
                    delay = backoff_delay(attempt)
                    attempt += 1
                    log = logger.warning if isinstance(exc, psycopg.Error) else logger.exception
                    log("Fetching jobs failed (%s); retrying in %.1f s", exc, delay)
                    self._idle = True
                    stop.wait(delay)
                    self._idle = False
                    continue
                attempt = 0
                if room.sync:
                    self._after_finishes = -1
                if more:
                    continue
                if not claimed:
                    self.hooks.fetch_empty()
                if once and not claimed and not self.inflight.unsettled:
                    if not self._wake.is_set():
                        return
                    continue
                timeout = None if once else self.poll_interval
                if expiry is not None:  # a prefetched job's time runs out first
                    left = max(0.0, expiry - time.monotonic())
                    timeout = left if timeout is None else min(timeout, left)
                self._wait_idle(timeout)
        finally:
            self._idle = True
            self._conn.close()

    def _wait_idle(self, timeout: float | None) -> None:
        """Wait for a wake-up: no claim is coming meanwhile, so the successes waiting for
        one are written without it."""
        self._idle = True
        self._wake.wait(timeout)
        self._idle = False

    def _paused(self, stop: threading.Event) -> bool:
        """Wait out a refetch delay; True if it was waited on (the caller asks for room
        again: it may have changed)."""
        if self.refetch is None or not (left := self.refetch.remaining()):
            return False
        while left and not stop.is_set():
            self._wait_idle(left)
            self._wake.clear()
            left = self.refetch.remaining()
        return True

    def _give_back_expired(self) -> float | None:
        """Give back the prefetched jobs that waited ``ttl`` seconds; return when the
        next waiting one runs out of time (time.monotonic()), None if none waits."""
        if self.ttl is None:
            return None
        finishes = self.inflight.finishes  # before: a job that finishes meanwhile counts
        expired = self.inflight.expire(time.monotonic() - self.ttl)
        if expired:
            # Every executor is still busy: claiming again now would take the same jobs
            # back from the workers that could run them.
            self._after_finishes = finishes
            ids = [c.job.id for c in expired]
            logger.info(
                "Giving back %d prefetched job(s) that waited %g s: %s",
                len(ids),
                self.ttl,
                ", ".join(f"#{i}" for i in ids),
            )
            try:
                self.store.return_jobs(ids, worker_id=self.worker_id, conn=self._conn.get())
            except Exception as exc:  # still locked by us: the next claim releases them
                logger.warning("Giving back prefetched jobs failed (%s); retrying", exc)
                self._unsure = True
        oldest = self.inflight.oldest_claim()
        return None if oldest is None else oldest + self.ttl

    def _release_unheld(self) -> None:
        """Give back what a claim whose answer was lost locked for this worker."""
        released = self.store.release_unheld(
            self.worker_id, self.inflight.unsettled, conn=self._conn.get()
        )
        self._unsure = False
        if released:
            logger.warning(
                "Gave back %d job(s) a lost claim had locked for this worker: %s",
                len(released),
                ", ".join(f"#{i}" for i in released),
            )

    def _claim(self, room: Room) -> tuple[int, bool]:
        """Claim for each kind with room; return how many jobs were claimed, and whether
        there may be more to claim right away. The first claim also completes the
        successes waiting to be written."""
        claimed, more, completing = 0, False, True
        if room.sync and self.task_names:
            jobs = self._claim_jobs(self.task_names, room.sync, completing=completing)
            completing = False
            if self.refetch is not None:
                self.refetch.after_fetch(len(jobs), room.sync)
            self._hand_out(jobs, self.hand_out, is_async=False)
            claimed += len(jobs)
            more = more or _may_be_more(jobs, room.sync)
        lane = self.async_lane
        if room.async_ and lane is not None and self.async_task_names:
            reserved = lane.reserve(room.async_)
            if reserved:
                jobs = []
                try:
                    jobs = self._claim_jobs(self.async_task_names, reserved, completing=completing)
                finally:
                    lane.release(reserved - len(jobs))
                self._hand_out(jobs, lane.submit, is_async=True)
                claimed += len(jobs)
                more = more or _may_be_more(jobs, reserved)
        return claimed, more

    def _claim_jobs(
        self, task_names: dict[int, str], limit: int, *, completing: bool = False
    ) -> list[ClaimedJob]:
        """One claim statement; with ``completing``, it also completes the successes
        waiting (handed back to the completer either way)."""
        completions = self.completions if completing else None
        done = completions.take_successes() if completions is not None else []
        try:
            jobs = self.store.claim_jobs(
                worker_id=self.worker_id,
                task_names=task_names,
                limit=limit,
                forbidden_flags=self.forbidden_flags(),
                now=local_time() if self.use_local_time else None,
                completed=[outcome.job.id for outcome in done],
                conn=self._conn.get(),
            )
        except BaseException:
            if completions is not None and done:
                completions.retry(done)
            raise
        if completions is not None and done:
            completions.recorded(done)
            if any(outcome.job.queue_name for outcome in done):
                self._wake.set()  # a queue it unlocked may hold the next runnable job
        return jobs

    def _hand_out(
        self,
        claimed: list[ClaimedJob],
        hand_out: Callable[[ClaimedJob], None],
        *,
        is_async: bool,
    ) -> None:
        # The claim's rows come back in no particular order; run them in the fetch order
        # (it matters with a prefetch buffer).
        if len(claimed) > 1:
            claimed.sort(key=_fetch_order)
        self.inflight.claimed(claimed, is_async=is_async)
        if self.hooks.listens("on_job_fetched"):
            for job in claimed:
                self.hooks.job_fetched(job.job)
                hand_out(job)
        else:
            for job in claimed:
                hand_out(job)


def _fetch_order(claimed: ClaimedJob) -> tuple[int, datetime]:
    return claimed.job.priority, claimed.job.run_at


def _may_be_more(claimed: list[ClaimedJob], limit: int) -> bool:
    """Whether a claim may have left runnable jobs behind: a full batch, or one cut short
    because it holds a queue's next job in place of the rest of that queue's backlog
    (locked now, so the next claim looks past it)."""
    return len(claimed) == limit or any(c.job.queue_name for c in claimed)
