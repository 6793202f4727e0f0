"""Store: every statement pgworker runs; the job lifecycle here, the rest in its parts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from .errors import JobNotCreatedError, PgWorkerError
from .job import Job
from .roundtrip import round_trip
from .spec import JobSpec
from .store_admin import AdminStatements
from .store_base import Connection, StoreBase, bigint_array
from .store_control import ControlStatements
from .store_cron import CronStatements
from .store_fast import FastEnqueueStatements, NewJob
from .store_recovery import RegistryStatements

__all__ = ["INTERRUPTED_MESSAGE", "ClaimedJob", "Connection", "Failure", "NewJob", "Store"]

#: last_error of a job given back because a forced stop cut it off (as the Rust port says).
INTERRUPTED_MESSAGE = "Job recovered after worker interruption"
#: Claims of up to this many jobs send their limit as part of the statement, one
#: statement per limit: PostgreSQL plans a limit it can see once (a generic plan) and
#: reuses the plan, where a limit sent as a parameter had every claim planned anew, about
#: a third of the server's time per claim. Larger claims plan each run, which costs
#: little per job, and keep the number of prepared statements per connection small.
LITERAL_LIMIT_MAX = 64


class ClaimedJob(msgspec.Struct, frozen=True):
    """A job locked by this worker, with its payload still as JSON text."""

    job: Job
    payload: str


class Failure(NamedTuple):
    """One job for ``fail_jobs``: its error (None keeps last_error), and how its next
    attempt differs from graphile-worker's (None and False: it doesn't)."""

    job_id: int
    message: str | None
    permanent: bool = False
    refund: bool = False  # a snooze: the attempt is given back
    delay: float | None = None  # seconds, instead of exp(least(attempts, 10))
    run_at: datetime | None = None  # a time, instead of a delay
    payload: str | None = None  # JSON text to replace the payload with
    locked_at: datetime | None = None  # the claim's lock it ran under (None: any of ours)


class Store(
    AdminStatements,
    ControlStatements,
    CronStatements,
    FastEnqueueStatements,
    RegistryStatements,
    StoreBase,
):
    """Runs pgworker's statements against one schema: the job lifecycle here, the admin
    API's statements from ``AdminStatements``, the cron scheduler's from
    ``CronStatements``, the set-based batch insert from ``FastEnqueueStatements``, the
    worker registry's from ``RegistryStatements``, cancel requests from
    ``ControlStatements``.

    Methods that change jobs on behalf of a caller take an optional ``conn`` so that they
    join the caller's transaction; without one they borrow a pool connection. A new group
    of statements is a ``StoreBase`` subclass added to the bases here, its ``.sql`` file
    added to ``QUERY_FILES``.
    """

    def schema_revision(self) -> tuple[int, int]:
        """The latest migration in the ledger, and the latest breaking one."""
        with self.connection() as conn:
            row = conn.execute(self.queries["ledger_state"]).fetchone()
        assert row is not None
        return row[0], row[1]

    def register_tasks(self, identifiers: Sequence[str]) -> dict[int, str]:
        """Make sure each task identifier has a row; return the id of each."""
        params = {"identifiers": list(identifiers)}
        with self.connection() as conn:
            conn.execute(self.queries["register_tasks"], params)
            rows = conn.execute(self.queries["task_ids"], params).fetchall()
        names = dict(rows)
        missing = set(identifiers) - set(names.values())
        if missing:  # only if a cleanup deleted them between the two statements
            raise PgWorkerError(f"task identifiers vanished while registering: {sorted(missing)}")
        self._task_names.update(names)
        return names

    def add_job(
        self, identifier: str, payload: str, spec: JobSpec, conn: Connection | None = None
    ) -> Job:
        """Add one job through ``add_job`` and return it."""
        params = {
            "identifier": identifier,
            "payload": payload,
            **spec_options(spec),
            "job_key_mode": spec.job_key_mode or "replace",
        }
        with self.connection(conn) as c:
            rows, reader = self._fetch_job_rows(c, "add_job", params)
            if len(rows) != 1 or rows[0][reader.positions["id"]] is None:
                # graphile-worker's own add_job (a database Node migrated) returns a row
                # of NULLs when a worker took the keyed job meanwhile (graphile/worker#580).
                raise JobNotCreatedError(
                    f"add_job created no {identifier!r} job (a worker took the keyed job "
                    "meanwhile?): try again"
                )
            if spec.job_key_mode != "unsafe_dedupe" or rows[0][reader.positions["revision"]] == 0:
                # Our own new or updated job: we know its names. (unsafe_dedupe may
                # return an older job, of another task or queue: those get looked up.)
                self._remember_names(rows[0], reader, identifier, spec.queue)
            return self._jobs_from_rows(rows, reader, c)[0]

    def add_jobs(
        self, jobs: Sequence[NewJob], *, preserve_run_at: bool, conn: Connection | None = None
    ) -> list[Job]:
        """Add a batch of jobs: without job keys set-based (``insert_jobs``), which writes
        the same rows; with keys through graphile-worker's ``add_jobs``."""
        if all(new.spec.job_key is None for new in jobs):
            return self.insert_jobs(jobs, conn=conn)
        return self.call_add_jobs(jobs, preserve_run_at=preserve_run_at, conn=conn)

    def call_add_jobs(
        self, jobs: Sequence[NewJob], *, preserve_run_at: bool, conn: Connection | None = None
    ) -> list[Job]:
        """Add a batch of jobs in one statement through the ``add_jobs`` function."""
        if not jobs:
            return []
        specs = msgspec.json.encode([spec_record(new) for new in jobs]).decode()
        params = {"specs": specs, "preserve_run_at": preserve_run_at}
        with self.connection(conn) as c:
            rows, reader = self._fetch_job_rows(c, "add_jobs", params)
            if len(rows) != len(jobs):
                raise JobNotCreatedError(f"add_jobs created {len(rows)} of {len(jobs)} jobs")
            # A batch of one task (or one queue) names all its rows without a lookup.
            identifiers = {new.identifier for new in jobs}
            queues = {new.spec.queue for new in jobs}
            self._remember_names(
                rows[0],
                reader,
                identifiers.pop() if len(identifiers) == 1 else None,
                queues.pop() if len(queues) == 1 else None,
            )
            return self._jobs_from_rows(rows, reader, c)

    def claim_jobs(
        self,
        *,
        worker_id: str,
        task_names: dict[int, str],
        limit: int,
        forbidden_flags: Sequence[str] | None = None,
        now: datetime | None = None,
        completed: Sequence[int] = (),
        conn: Connection | None = None,
    ) -> list[ClaimedJob]:
        """Lock up to ``limit`` jobs for ``worker_id`` that are runnable at ``now`` (None:
        the database's ``now()``), in the same statement as completing the jobs
        ``completed`` (as ``complete_jobs`` does): one commit for both."""
        params: dict[str, Any] = {
            "done_ids": bigint_array(completed),
            "worker_id": worker_id,
            "task_ids": list(task_names),
            "forbidden_flags": list(forbidden_flags) if forbidden_flags else None,
            "now": now,
        }
        if limit <= LITERAL_LIMIT_MAX:
            statement = self.queries.with_limit("claim_jobs", limit)
        else:
            statement = self.queries["claim_jobs"]
            params["limit"] = limit
        with self.connection(conn) as c:
            rows, reader = self._fetch_job_rows(
                c, "claim_jobs", params, hot=True, statement=statement
            )
        task_id = reader.positions["task_id"]
        queue_name = reader.positions["queue_name"]
        payload = reader.positions["payload"]
        return [
            ClaimedJob(
                reader.job(
                    row, task_identifier=task_names[row[task_id]], queue_name=row[queue_name]
                ),
                row[payload],
            )
            for row in rows
        ]

    def complete_jobs(
        self, job_ids: Sequence[int], *, worker_id: str, conn: Connection | None = None
    ) -> None:
        """Delete finished jobs still locked by ``worker_id`` and unlock their queues."""
        params = {"job_ids": bigint_array(job_ids), "worker_id": worker_id}
        with self.connection(conn) as c:
            self._hot_cursor(c).execute(self.queries["complete_jobs"], params)

    def fail_jobs(
        self,
        failures: Iterable[Failure],
        *,
        worker_id: str,
        conn: Connection | None = None,
    ) -> None:
        """Record failures (and snoozes), all in one statement."""
        columns = list(zip(*failures, strict=True))
        params = {
            "job_ids": list(columns[0]),
            "messages": list(columns[1]),
            "permanent": list(columns[2]),
            "refund": list(columns[3]),
            "delays": list(columns[4]),
            "run_ats": list(columns[5]),
            "payloads": list(columns[6]),
            "locked_ats": list(columns[7]),
            "worker_id": worker_id,
        }
        with self.connection(conn) as c:
            c.execute(self.queries["fail_jobs"], params)

    def return_jobs(
        self,
        job_ids: Sequence[int],
        *,
        worker_id: str,
        delay: float = 0.0,
        message: str | None = None,
        locked_ats: Sequence[datetime | None] | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Give back jobs without counting the attempt; see ``return_jobs`` in
        queries.sql for what ``delay`` and ``message`` change. With ``locked_ats`` (one
        per job), a job is returned only from the lock its run held."""
        params = {
            "job_ids": list(job_ids),
            "locked_ats": None if locked_ats is None else list(locked_ats),
            "worker_id": worker_id,
            "delay": delay,
            "message": message,
        }
        self._execute("return_jobs", params, conn=conn)

    def unlock_worker(self, worker_id: str, *, conn: Connection | None = None) -> None:
        """Release anything still locked by ``worker_id``."""
        self._execute("unlock_worker", {"worker_id": worker_id}, conn=conn)

    def listen(self, conn: Connection, *, timeout: float) -> list[tuple[str, str]]:
        """Subscribe ``conn`` to graphile-worker's channels (and pgworker's cancels),
        within ``timeout`` seconds (else TimeoutError); returns the notifications that
        arrived meanwhile."""
        return round_trip(conn, self.queries["listen"], timeout)

    def ping(self, conn: Connection, *, timeout: float) -> list[tuple[str, str]]:
        """A round trip on ``conn`` within ``timeout`` seconds (else TimeoutError), to
        notice a dead or silent connection; returns the notifications that arrived
        meanwhile."""
        return round_trip(conn, self.queries["ping"], timeout)


def spec_record(new: NewJob) -> dict[str, Any]:
    """One element of add_jobs' JSON array of job_spec records."""
    return {
        "identifier": new.identifier,
        "payload": msgspec.Raw(new.payload.encode()),
        **spec_options(new.spec),
    }


def spec_options(spec: JobSpec) -> dict[str, Any]:
    """The options of a job as add_job and job_spec name them."""
    return {
        "queue_name": spec.queue,
        "run_at": spec.run_at,
        "max_attempts": spec.max_attempts,
        "job_key": spec.job_key,
        "priority": spec.priority,
        "flags": list(spec.flags) if spec.flags is not None else None,
    }
