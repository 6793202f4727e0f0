"""The store's statements for the worker registry: heartbeats, sweeps and stale locks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from psycopg import ClientCursor

from .roundtrip import first_value
from .store_base import Connection, StoreBase

#: The Rust crate's advisory lock for its sweeper ("GWRS", "SWEP"): taking the same one
#: means a pgworker and a Rust sweeper never run at the same time.
SWEEP_LOCK = (0x4757_5253, 0x5357_4550)
#: Seconds the server lets a sweep's transaction sit idle (its client silent) before it
#: ends the session and so frees the sweep lock.
SWEEP_IDLE_TIMEOUT = 10.0
#: How long a Rust worker's heartbeat may be silent before it counts as dead: the Rust
#: crate's own default sweep threshold, never pgworker's shorter one.
RUST_STALE_AFTER = 300.0


def sweep_lock_params() -> dict[str, int]:
    """The parameters of the ``try_sweep_lock`` statement (sql/recovery.sql)."""
    return {
        "class_id": SWEEP_LOCK[0],
        "object_id": SWEEP_LOCK[1],
        "idle_timeout_ms": int(SWEEP_IDLE_TIMEOUT * 1000),
    }


class DeadWorker(msgspec.Struct, frozen=True):
    """A registered worker whose heartbeat was too old: ``heartbeat_age`` seconds."""

    worker_id: str
    heartbeat_age: float


class RecoveredJob(msgspec.Struct, frozen=True):
    """A job a sweep took back from a dead worker; ``failed`` when it used up its
    recoveries and was failed for good instead."""

    job_id: int
    worker_id: str
    failed: bool


class SweepResult(msgspec.Struct, frozen=True):
    """What one sweep found and did."""

    dead: list[DeadWorker]
    recovered: list[RecoveredJob]


class RegisteredWorker(msgspec.Struct, frozen=True):
    """A lock owner as ``pgworker workers`` lists it: a registry row, or an owner with
    locks and no row (``registered`` False: a Node worker, or one swept while alive)."""

    worker_id: str
    registered: bool
    started_at: datetime | None
    last_heartbeat_at: datetime | None
    heartbeat_age: float | None
    metadata: dict[str, Any] | None
    jobs_held: int
    queues_held: int

    def state(self, stale_after: float) -> str:
        """``live``, ``stale`` (silent for longer than its runtime allows: pgworker's
        ``stale_after``, or the Rust crate's 5 minutes), or ``unregistered``."""
        if self.heartbeat_age is None:
            return "unregistered"
        limit = stale_after if self.runtime == "pgworker" else RUST_STALE_AFTER
        return "stale" if self.heartbeat_age > limit else "live"

    @property
    def runtime(self) -> str:
        """``pgworker``, ``rust`` (any other registry row) or ``unregistered``."""
        if not self.registered:
            return "unregistered"
        return "pgworker" if (self.metadata or {}).get("runtime") == "pgworker" else "rust"


class RegistryStatements(StoreBase):
    """The statements of ``sql/recovery.sql``, for the Store."""

    def heartbeat(
        self, worker_id: str, metadata: dict[str, Any], *, conn: Connection, timeout: float
    ) -> bool:
        """Register ``worker_id`` or refresh its heartbeat; True when its row had to be
        created. Raises TimeoutError when no answer came within ``timeout`` seconds (a
        silent network: ``conn`` must be thrown away); a beat must never wait longer than
        the registry's patience, or a live worker's jobs go to others."""
        params = {"worker_id": worker_id, "metadata": json.dumps(metadata)}
        statement = ClientCursor(conn).mogrify(self.queries["worker_heartbeat"], params)
        created = first_value(conn, statement.encode(conn.info.encoding), timeout)
        return created == "t"

    def register_worker(
        self,
        worker_id: str,
        metadata: dict[str, Any],
        *,
        stale_after: float,
        release: bool = True,
        conn: Connection,
    ) -> int | None:
        """Register ``worker_id`` as it starts; None, with nothing changed, when a worker
        of that id heartbeat within ``stale_after`` seconds. Otherwise, with ``release``,
        the jobs and queues still locked under that id (a dead predecessor's: this worker
        has none yet) are released, and how many jobs that was is returned. A worker
        whose id was made up just now passes ``release=False``: nothing can be locked
        under it, and looking costs two scans of the jobs table (no index on locked_by)."""
        params = {
            "worker_id": worker_id,
            "metadata": json.dumps(metadata),
            "stale_after": stale_after,
        }
        with self.connection(conn) as c, c.transaction():
            if c.execute(self.queries["register_worker"], params).fetchone() is None:
                return None
            if not release:
                return 0
            row = c.execute(
                self.queries["force_unlock_workers"], {"worker_ids": [worker_id]}
            ).fetchone()
        return int(row[0]) if row else 0

    def deregister(self, worker_id: str, *, conn: Connection | None = None) -> None:
        """Remove ``worker_id`` from the registry."""
        self._execute("worker_deregister", {"worker_id": worker_id}, conn=conn)

    def sweep_dead_workers(
        self,
        *,
        threshold: float,
        foreign_threshold: float,
        max_recoveries: int,
        self_id: str | None = None,
        conn: Connection | None = None,
    ) -> SweepResult | None:
        """In one transaction under the sweep lock: find registered workers whose
        heartbeat is older than their threshold, other than the sweeping worker
        ``self_id``, give their jobs and queues back and forget them. None when another
        sweeper holds the lock."""
        with self.connection(conn) as c, c.transaction():
            row = c.execute(self.queries["try_sweep_lock"], sweep_lock_params()).fetchone()
            if not (row and row[0]):
                return None
            found = c.execute(
                self.queries["lock_dead_workers"],
                {
                    "threshold": threshold,
                    "foreign_threshold": foreign_threshold,
                    "self_id": self_id,
                },
            ).fetchall()
            dead = [DeadWorker(worker_id, age) for worker_id, age in found]
            if not dead:
                return SweepResult([], [])
            rows = c.execute(
                self.queries["recover_dead_workers"],
                {"worker_ids": [d.worker_id for d in dead], "max_recoveries": max_recoveries},
            ).fetchall()
        return SweepResult(dead, [RecoveredJob(*row) for row in rows])

    def release_unheld(
        self, worker_id: str, held: Sequence[int], *, conn: Connection | None = None
    ) -> list[int]:
        """Give back the jobs (and queues) locked by ``worker_id`` beyond ``held``, the
        jobs it knows it holds: what a claim whose answer was lost left behind."""
        params = {"worker_id": worker_id, "held": list(held)}
        with self.connection(conn) as c:
            return [row[0] for row in c.execute(self.queries["release_unheld"], params)]

    def reset_stale_locks(self, *, conn: Connection | None = None) -> None:
        """Unlock jobs and queues locked more than four hours ago by owners that are not
        in the registry (graphile-worker's rule for workers that never heartbeat)."""
        self._execute("reset_stale_locks", conn=conn)

    def list_workers(self) -> list[RegisteredWorker]:
        """Every registered worker, and every lock owner missing from the registry."""
        with self.connection() as c:
            rows = c.execute(self.queries["list_workers"]).fetchall()
        return [
            RegisteredWorker(
                worker_id=row[0],
                registered=row[1],
                started_at=row[2],
                last_heartbeat_at=row[3],
                heartbeat_age=row[4],
                metadata=None if row[5] is None else json.loads(row[5]),
                jobs_held=row[6],
                queues_held=row[7],
            )
            for row in rows
        ]

    def unserved_tasks(self, *, conn: Connection | None = None) -> dict[str, int]:
        """Task identifiers with runnable jobs that no registered worker says it runs,
        with how many jobs each has waiting."""
        with self.connection(conn) as c:
            return dict(c.execute(self.queries["unserved_tasks"]).fetchall())
