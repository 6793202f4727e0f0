"""Per-minute job counts: a table of pgworker's own, written by a plugin in the worker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import msgspec
from psycopg_pool import ConnectionPool

from ..errors import ConfigurationError, PgWorkerError
from ..hooks import Plugin
from ..queries import Queries
from ..settings import derived_schema
from ..store_base import Connection, StoreBase

if TYPE_CHECKING:
    from ..hooks import WorkerInfo
    from ..job import Job

logger = logging.getLogger(__name__)

#: What the stats schema is called: the worker schema's name with this suffix.
STATS_SCHEMA_SUFFIX = "_stats"
Outcome = Literal["completed", "failed", "permanently_failed"]
DEFAULT_FLUSH_INTERVAL = 10.0
DEFAULT_RETENTION = 7 * 24 * 3600.0
#: How often a flush also deletes the minutes past the retention period, in seconds.
PRUNE_EVERY = 3600.0


def stats_schema_name(schema: str) -> str:
    """The stats schema of the worker schema ``schema``."""
    return derived_schema(schema, STATS_SCHEMA_SUFFIX, "a stats schema")


class MinuteCount(msgspec.Struct, frozen=True):
    """How many jobs (all tasks) completed and failed in one minute (UTC)."""

    minute: datetime
    completed: int = 0
    failed: int = 0
    permanently_failed: int = 0


class StatsStore(StoreBase):
    """The statements of ``sql/stats.sql``, bound to the stats schema of ``schema``."""

    def __init__(self, pool: ConnectionPool[Connection] | None, schema: str) -> None:
        super().__init__(pool, schema)
        #: The schema holding ``job_minutes``.
        self.stats_schema = stats_schema_name(schema)
        self.queries = Queries(self.stats_schema, files=("stats.sql",))

    def ensure(self) -> None:
        """Create the stats schema and table if missing (safe from many processes)."""
        with self.connection() as conn, conn.transaction():
            conn.execute(self.queries["stats_lock"], {"schema": self.stats_schema})
            conn.execute(self.queries["stats_create_schema"])
            conn.execute(self.queries["stats_create_table"])

    def record(self, counts: dict[tuple[datetime, str, Outcome], int]) -> None:
        """Add these counts, by minute, task and outcome, in one statement."""
        if not counts:
            return
        keys = list(counts)
        params = {
            "minutes": [key[0] for key in keys],
            "tasks": [key[1] for key in keys],
            "outcomes": [key[2] for key in keys],
            "counts": [counts[key] for key in keys],
        }
        self._execute("stats_record", params)

    def prune(self, keep: float) -> int:
        """Delete the minutes older than ``keep`` seconds; how many rows went."""
        return self._execute("stats_prune", {"keep": keep})

    def per_minute(self, since: datetime) -> list[MinuteCount]:
        """The counts of each minute since ``since`` that has any, oldest first."""
        with self.connection() as conn:
            rows = conn.execute(self.queries["stats_per_minute"], {"since": since}).fetchall()
        minutes: dict[datetime, dict[str, int]] = {}
        for minute, outcome, count in rows:
            minutes.setdefault(minute, {})[outcome] = int(count)
        return [MinuteCount(minute, **counts) for minute, counts in minutes.items()]


class StatsPlugin(Plugin):
    """Counts the jobs that complete and fail in each minute, by task, into
    ``<schema>_stats.job_minutes`` (the dashboard's chart reads it).

    Counts add up in memory and are written every ``flush_interval`` seconds (one upsert
    of a row per minute, task and outcome) by a thread that runs while a worker does,
    and once more when the last worker stops. The worker creates the table as it starts.
    Rows older than ``retention`` seconds (7 days) are deleted about once an hour.
    A failed write is logged, and its counts are kept for the next one.
    """

    def __init__(
        self,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        if flush_interval <= 0 or retention <= 0:
            raise ConfigurationError("flush_interval and retention must be positive")
        self.flush_interval = flush_interval
        self.retention = retention
        self.store: StatsStore | None = None
        self._counts: dict[tuple[datetime, str, Outcome], int] = {}
        self._lock = threading.Lock()
        self._workers = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    # -- hooks ------------------------------------------------------------------------

    def on_worker_init(self, worker: WorkerInfo) -> None:
        """Create the stats table, on the worker's pool."""
        store = StatsStore(worker.admin.store.pool, worker.schema)
        store.ensure()
        self.store = store

    def on_worker_start(self, worker: WorkerInfo) -> None:
        """Start the flushing thread with the first worker."""
        with self._lock:
            self._workers += 1
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pgworker-stats", daemon=True)
            self._thread.start()

    def on_worker_shutdown(self, worker: WorkerInfo) -> None:
        """Stop the flushing thread with the last worker, and write what is left."""
        with self._lock:
            self._workers = max(0, self._workers - 1)
            thread = self._thread if self._workers == 0 else None
            if thread is not None:
                self._thread = None
                self._stop.set()
        if thread is not None:
            thread.join()
        self.flush()

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        """Count a success."""
        self._count(job.task_identifier, "completed")

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        """Count a failed attempt (retried or not)."""
        self._count(job.task_identifier, "failed")

    def on_job_permanently_failed(self, job: Job, error: str) -> None:
        """Count a job that failed for good (also counted as failed)."""
        self._count(job.task_identifier, "permanently_failed")

    # -- counting ---------------------------------------------------------------------

    def _count(self, task: str, outcome: Outcome) -> None:
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        key = (minute, task, outcome)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def pending(self) -> dict[tuple[datetime, str, Outcome], int]:
        """The counts not written yet (a copy)."""
        with self._lock:
            return dict(self._counts)

    def flush(self) -> None:
        """Write the counts gathered since the last flush; on failure keep them."""
        with self._lock:
            counts, self._counts = self._counts, {}
        store = self.store
        if not counts or store is None:
            self._merge(counts)
            return
        try:
            store.record(counts)
        except PgWorkerError:
            logger.exception("Could not write job counts to %s; will retry", store.stats_schema)
            self._merge(counts)
            return
        self._maybe_prune(store)

    def _merge(self, counts: dict[tuple[datetime, str, Outcome], int]) -> None:
        with self._lock:
            for key, count in counts.items():
                self._counts[key] = self._counts.get(key, 0) + count

    def _maybe_prune(self, store: StatsStore) -> None:
        now = time.monotonic()
        if self._last_prune and now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            store.prune(self.retention)
        except PgWorkerError:
            logger.exception("Could not delete old job counts from %s", store.stats_schema)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # the thread must not die: log and go on
                logger.exception("Flushing job counts failed")


def minutes_between(start: datetime, end: datetime) -> Iterator[datetime]:
    """Every whole minute from ``start`` to ``end`` (both truncated), in order."""
    current = start.replace(second=0, microsecond=0)
    last = end.replace(second=0, microsecond=0)
    while current <= last:
        yield current
        current += timedelta(minutes=1)


__all__ = [
    "MinuteCount",
    "StatsPlugin",
    "StatsStore",
    "minutes_between",
    "stats_schema_name",
]
