"""Store: every statement that enqueues, claims, completes and fails jobs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
import psycopg
from psycopg_pool import ConnectionPool

from .errors import DatabaseUnavailableError, JobNotCreatedError, PgWorkerError
from .job import Job, JobRowReader, job_row_reader
from .queries import Queries
from .spec import JobSpec

#: Connections from psycopg_pool, with tuple rows.
Connection = psycopg.Connection[tuple[Any, ...]]

#: last_error of a job given back because a forced stop cut it off (as the Rust port says).
INTERRUPTED_MESSAGE = "Job recovered after worker interruption"


class ClaimedJob(msgspec.Struct, frozen=True):
    """A job locked by this worker, with its payload still as JSON text."""

    job: Job
    payload: str


class NewJob(msgspec.Struct, frozen=True):
    """One job of a batch: its task, its payload as JSON text, and its options."""

    identifier: str
    payload: str
    spec: JobSpec


class Store:
    """Runs pgworker's statements against one schema.

    Methods that change jobs on behalf of a caller take an optional ``conn`` so that they
    join the caller's transaction; without one they borrow a pool connection.
    """

    def __init__(self, pool: ConnectionPool[Connection] | None, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self.queries = Queries(schema)
        # Caches of names by id: ids come from identity sequences and are never reused.
        self._task_names: dict[int, str] = {}
        self._queue_names: dict[int, str] = {}

    def require_pool(self) -> ConnectionPool[Connection]:
        """The pool, or a clear error when the app was never opened."""
        if self.pool is None:
            raise PgWorkerError(
                "the app is not open: call app.open() or use `with app:` first "
                "(or pass conn= to defer inside your own transaction)"
            )
        return self.pool

    @contextmanager
    def connection(self, conn: Connection | None = None) -> Iterator[Connection]:
        """Yield ``conn`` if given (the caller's transaction), else a pool connection.

        The driver errors a caller can act on become pgworker errors here.
        """
        try:
            if conn is not None:
                yield conn
            else:
                with self.require_pool().connection() as own:
                    yield own
        except (
            psycopg.errors.InvalidSchemaName,
            psycopg.errors.UndefinedFunction,
            psycopg.errors.UndefinedTable,
        ) as exc:
            raise PgWorkerError(
                f"the worker schema {self.schema!r} is not installed in this database: "
                f"run `pgworker migrate` (or app.migrate()) first ({exc.diag.message_primary})"
            ) from exc
        except DatabaseUnavailableError:
            raise
        except psycopg.OperationalError as exc:  # PoolTimeout included
            raise DatabaseUnavailableError(
                f"the database is unreachable: {str(exc).strip() or type(exc).__name__}"
            ) from exc
        except psycopg.Error as exc:
            if exc.sqlstate == "GWNOR":
                raise JobNotCreatedError(str(exc).strip()) from exc
            raise

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
            **_spec_options(spec),
            "job_key_mode": spec.job_key_mode or "replace",
        }
        with self.connection(conn) as c:
            rows, reader = self.fetch_job_rows(c, "add_job", params)
            assert len(rows) == 1, "add_job returns a row or raises"
            if spec.job_key_mode != "unsafe_dedupe" or rows[0][reader.positions["revision"]] == 0:
                # Our own new or updated job: we know its names. (unsafe_dedupe may
                # return an older job, of another task or queue: those get looked up.)
                self._remember_names(rows[0], reader, identifier, spec.queue)
            return self.jobs_from_rows(rows, reader, c)[0]

    def add_jobs(
        self, jobs: Sequence[NewJob], *, preserve_run_at: bool, conn: Connection | None = None
    ) -> list[Job]:
        """Add a batch of jobs in one statement through ``add_jobs``."""
        if not jobs:
            return []
        specs = msgspec.json.encode([_spec_record(new) for new in jobs]).decode()
        params = {"specs": specs, "preserve_run_at": preserve_run_at}
        with self.connection(conn) as c:
            rows, reader = self.fetch_job_rows(c, "add_jobs", params)
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
            return self.jobs_from_rows(rows, reader, c)

    def fetch_job_rows(
        self, conn: Connection, query: str, params: dict[str, Any] | None = None
    ) -> tuple[list[tuple[Any, ...]], JobRowReader]:
        """Run the statement ``query``, which returns job rows; return them with their reader."""
        cur = conn.execute(self.queries[query], params)
        rows = cur.fetchall()
        return rows, job_row_reader(column_names(cur))

    def jobs_from_rows(
        self, rows: Sequence[tuple[Any, ...]], reader: JobRowReader, conn: Connection
    ) -> list[Job]:
        """Jobs from rows of the Job columns plus ``task_id, job_queue_id``, naming tasks
        and queues from a cache (ids are never reused); unknown ids cost one lookup on
        ``conn``."""
        task_id = reader.positions["task_id"]
        queue_id = reader.positions["job_queue_id"]
        task_ids = list({row[task_id] for row in rows} - self._task_names.keys())
        queue_ids = list(
            {row[queue_id] for row in rows if row[queue_id] is not None} - self._queue_names.keys()
        )
        if task_ids or queue_ids:
            found = conn.execute(
                self.queries["names_by_id"], {"task_ids": task_ids, "queue_ids": queue_ids}
            ).fetchall()
            for kind, id_, name in found:
                (self._task_names if kind == "task" else self._queue_names)[id_] = name
        return [
            reader.job(
                row,
                task_identifier=self._task_names[row[task_id]],
                queue_name=None if row[queue_id] is None else self._queue_names[row[queue_id]],
            )
            for row in rows
        ]

    def _remember_names(
        self,
        row: tuple[Any, ...],
        reader: JobRowReader,
        identifier: str | None,
        queue: str | None,
    ) -> None:
        """Cache the task and queue names of ``row``'s ids, where the caller knows them."""
        if identifier is not None:
            self._task_names[row[reader.positions["task_id"]]] = identifier
        queue_id = row[reader.positions["job_queue_id"]]
        if queue is not None and queue_id is not None:
            self._queue_names[queue_id] = queue

    def claim_jobs(
        self,
        *,
        worker_id: str,
        task_names: dict[int, str],
        limit: int,
        forbidden_flags: Sequence[str] | None = None,
        conn: Connection | None = None,
    ) -> list[ClaimedJob]:
        """Lock up to ``limit`` runnable jobs for ``worker_id``."""
        params = {
            "worker_id": worker_id,
            "task_ids": list(task_names),
            "limit": limit,
            "forbidden_flags": list(forbidden_flags) if forbidden_flags else None,
        }
        with self.connection(conn) as c:
            rows, reader = self.fetch_job_rows(c, "claim_jobs", params)
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
        params = {"job_ids": list(job_ids), "worker_id": worker_id}
        with self.connection(conn) as c:
            c.execute(self.queries["complete_jobs"], params)

    def fail_jobs(
        self,
        failures: Iterable[tuple[int, str, bool]],
        *,
        worker_id: str,
        conn: Connection | None = None,
    ) -> None:
        """Record failures given as ``(job id, message, permanent)``."""
        job_ids, messages, permanent = (list(column) for column in zip(*failures, strict=True))
        params = {
            "job_ids": job_ids,
            "messages": messages,
            "permanent": permanent,
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
    ) -> None:
        """Give back jobs without counting the attempt; see ``return_jobs`` in
        queries.sql for what ``delay`` and ``message`` change."""
        self._execute(
            self.queries["return_jobs"],
            {"job_ids": list(job_ids), "worker_id": worker_id, "delay": delay, "message": message},
        )

    def unlock_worker(self, worker_id: str) -> None:
        """Release anything still locked by ``worker_id``."""
        self._execute(self.queries["unlock_worker"], {"worker_id": worker_id})

    def reset_stale_locks(self) -> None:
        """Unlock jobs and queues locked more than four hours ago."""
        self._execute(self.queries["reset_stale_locks"], None)

    def _execute(self, query: bytes, params: dict[str, Any] | None) -> None:
        with self.connection() as conn:
            conn.execute(query, params)


def column_names(cur: psycopg.Cursor[Any]) -> tuple[str, ...]:
    """The names of the columns of ``cur``'s current result."""
    return tuple(column.name for column in cur.description or ())


def _spec_record(new: NewJob) -> dict[str, Any]:
    """One element of add_jobs' JSON array of job_spec records."""
    return {
        "identifier": new.identifier,
        "payload": msgspec.Raw(new.payload.encode()),
        **_spec_options(new.spec),
    }


def _spec_options(spec: JobSpec) -> dict[str, Any]:
    """The options of a job as add_job and job_spec name them."""
    return {
        "queue_name": spec.queue,
        "run_at": spec.run_at,
        "max_attempts": spec.max_attempts,
        "job_key": spec.job_key,
        "priority": spec.priority,
        "flags": list(spec.flags) if spec.flags is not None else None,
    }
