"""A steady stream of ledger jobs, added from a thread at a rate that can change."""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from pgworker import App, PgWorkerError

logger = logging.getLogger(__name__)

TASK = "ledger_job"


class Load(threading.Thread):
    """Adds ``ledger_job`` jobs at ``rate`` per second until stopped, remembering each
    added job's id and when ``defer`` returned it. A failed ``defer`` (the database is
    down) is counted, not retried: that job was never added."""

    def __init__(self, app: App, *, rate: float, seconds: float) -> None:
        super().__init__(name="faults-load", daemon=True)
        self.app = app
        self.rate = rate
        self.seconds = seconds
        self.added: dict[int, float] = {}
        self.failed = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Add jobs on a schedule; after a stall, carry on from now (no burst)."""
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            try:
                job = self.app.defer(TASK, {"seconds": self.seconds})
            except (PgWorkerError, psycopg.Error) as exc:
                self.failed += 1
                logger.debug("defer failed: %s", exc)
                self._stop_event.wait(0.2)
                next_at = time.monotonic()
                continue
            with self._lock:
                self.added[job.id] = time.time()
            next_at = max(next_at + 1.0 / self.rate, time.monotonic() - 1.0)
            self._stop_event.wait(max(0.0, next_at - time.monotonic()))

    def snapshot(self) -> dict[int, float]:
        """The jobs added so far: id to unix time."""
        with self._lock:
            return dict(self.added)

    def stop(self) -> None:
        """Stop adding and wait for the thread."""
        self._stop_event.set()
        self.join(30)
