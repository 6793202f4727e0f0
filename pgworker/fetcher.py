"""Fetcher: claims runnable jobs whenever the worker has room, and hands them out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import psycopg

from .connections import OwnConnection, backoff_delay
from .hooks import Hooks
from .inflight import InFlight
from .store import ClaimedJob, Store

logger = logging.getLogger(__name__)


class Fetcher:
    """The claim loop. With a prefetch buffer it claims only once there is room for a
    whole batch (fewer, larger claims); without one, as soon as an executor is free.
    Between claims that find nothing it sleeps until ``wake()`` (a notification, or a
    settled outcome that may have unlocked a queue) or the poll interval."""

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
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.hooks = hooks
        self.inflight = inflight
        self.task_names = task_names
        self.batch = batch
        self.poll_interval = poll_interval
        self.forbidden_flags = forbidden_flags
        self.hand_out = hand_out
        self._conn = OwnConnection(conninfo)
        self._wake = threading.Event()

    def wake(self) -> None:
        """Claim now instead of at the next poll."""
        self._wake.set()

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Claim until ``stop`` is set; with ``once``, return when nothing is runnable
        and nothing claimed is unsettled."""
        attempt = 0
        try:
            while not stop.is_set():
                limit = self.inflight.room(self.batch, stop)
                if stop.is_set():
                    return
                self._wake.clear()
                try:
                    claimed = self.store.claim_jobs(
                        worker_id=self.worker_id,
                        task_names=self.task_names,
                        limit=limit,
                        forbidden_flags=self.forbidden_flags(),
                        conn=self._conn.get(),
                    )
                except Exception as exc:  # the loop must outlive any one failure
                    delay = backoff_delay(attempt)
                    attempt += 1
                    log = logger.warning if isinstance(exc, psycopg.Error) else logger.exception
                    log("Fetching jobs failed (%s); retrying in %.1f s", exc, delay)
                    stop.wait(delay)
                    continue
                attempt = 0
                self._hand_out(claimed)
                if len(claimed) == limit or any(c.job.queue_name for c in claimed):
                    # There may be more: a full batch, or one cut short because it holds
                    # a queue's next job in place of the rest of that queue's backlog
                    # (locked now, so the next claim looks past it).
                    continue
                if once and not claimed and not self.inflight.unsettled:
                    if not self._wake.is_set():
                        return
                    continue
                self._wake.wait(None if once else self.poll_interval)
        finally:
            self._conn.close()

    def _hand_out(self, claimed: list[ClaimedJob]) -> None:
        # The claim's rows come back in no particular order; run them in the fetch order
        # (it matters with a prefetch buffer).
        claimed.sort(key=lambda c: (c.job.priority, c.job.run_at))
        self.inflight.claimed(claimed)
        for job in claimed:
            self.hooks.job_fetched(job.job)
            self.hand_out(job)
