"""ResultsStore: every statement of the Django backend, on the results table and the jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from pgworker.errors import PgWorkerError
from pgworker.queries import Queries
from pgworker.store_base import database_error

#: Seconds between two deletions of expired results by one worker process.
EXPIRE_EVERY = 60.0


class JobRow(msgspec.Struct, frozen=True, kw_only=True):
    """The job of a Django task result, while graphile-worker still holds it."""

    id: int
    task_identifier: str
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: datetime
    locked_at: datetime | None
    locked_by: str | None
    payload: str


class ResultRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the results table, its JSON columns decoded."""

    id: str
    job_id: int | None
    task_path: str
    backend: str
    queue_name: str
    priority: int
    run_after: datetime | None
    args: list[Any]
    kwargs: dict[str, Any]
    status: str
    enqueued_at: datetime | None
    started_at: datetime | None
    last_attempted_at: datetime | None
    finished_at: datetime | None
    return_value: Any
    errors: list[dict[str, str]]
    worker_ids: list[str]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What the results table says once an attempt has started."""

    started_at: datetime
    last_attempted_at: datetime
    worker_ids: list[str]
    errors: list[dict[str, str]]


class ResultsStore:
    """The statements of the Django backend: the job of a result on the worker schema, and
    the results table (``<schema>_results.django_task_results``), which exists only when
    results are enabled. Every method takes the connection to run on."""

    def __init__(self, schema: str, results_schema: str, ttl: float) -> None:
        self.schema = schema
        self.results_schema = results_schema
        self.ttl = ttl
        self._jobs = Queries(schema, files=("django_jobs.sql",))
        self._results = Queries(results_schema, files=("django_results.sql",))
        self._expire_lock = threading.Lock()
        self._next_expiry = 0.0

    def create(self, conn: psycopg.Connection[Any]) -> None:
        """Create the results schema and table if missing (safe from many processes)."""
        with _translated(), conn.transaction():
            conn.execute(self._results["results_lock"], {"schema": self.results_schema})
            for name in ("results_create_schema", "results_create_table", "results_create_index"):
                conn.execute(self._results[name])

    def job(self, conn: psycopg.Connection[Any], key: str) -> JobRow | None:
        """The job whose job_key is ``key``, or None once graphile-worker deleted it."""
        with _translated(self.schema), conn.transaction():
            row = conn.execute(self._jobs["django_job_by_key"], {"key": key}).fetchone()
        if row is None:
            return None
        fields = JobRow.__struct_fields__
        return JobRow(**dict(zip(fields, row, strict=True)))

    def get(self, conn: psycopg.Connection[Any], result_id: str) -> ResultRow | None:
        """The result ``result_id``, or None (never stored, or expired)."""
        with _translated(self.results_schema), conn.transaction():
            row = conn.execute(self._results["results_get"], {"id": result_id}).fetchone()
        if row is None:
            return None
        values = dict(zip(ResultRow.__struct_fields__, row, strict=True))
        for name in ("args", "kwargs", "return_value", "errors"):
            text = values[name]
            values[name] = None if text is None else msgspec.json.decode(text)
        return ResultRow(**values)

    def started(self, conn: psycopg.Connection[Any], **record: Any) -> Attempt:
        """Record the start of an attempt (``record``: id, job_id, task_path, backend,
        queue_name, priority, run_after, args and kwargs as JSON text, enqueued_at,
        worker_id); returns the result's times, workers and earlier errors."""
        params = {**record, "ttl": self.ttl}
        with _translated(self.results_schema):
            row = conn.execute(self._results["results_started"], params).fetchone()
        assert row is not None, "an upsert returns its row"
        started_at, last_attempted_at, worker_ids, errors = row
        return Attempt(
            started_at=started_at,
            last_attempted_at=last_attempted_at,
            worker_ids=list(worker_ids),
            errors=msgspec.json.decode(errors),
        )

    def succeeded(self, conn: psycopg.Connection[Any], result_id: str, return_json: str) -> None:
        """Record success with the return value (JSON text)."""
        params = {"id": result_id, "return_value": return_json, "ttl": self.ttl}
        with _translated(self.results_schema):
            conn.execute(self._results["results_succeeded"], params)

    def failed(
        self, conn: psycopg.Connection[Any], result_id: str, error_json: str, *, final: bool
    ) -> None:
        """Record a failed attempt (``error_json``: exception_class_path and traceback):
        FAILED when ``final``, else READY for the retry."""
        params = {
            "id": result_id,
            "error": error_json,
            "status": "FAILED" if final else "READY",
            "ttl": self.ttl,
        }
        with _translated(self.results_schema):
            conn.execute(self._results["results_failed"], params)

    def expire_due(self, conn: psycopg.Connection[Any]) -> int:
        """Delete expired results, at most once a minute per store; returns how many."""
        with self._expire_lock:
            now = time.monotonic()
            if now < self._next_expiry:
                return 0
            self._next_expiry = now + EXPIRE_EVERY
        with _translated(self.results_schema):
            return conn.execute(self._results["results_expire"]).rowcount


@contextmanager
def _translated(schema: str | None = None) -> Iterator[None]:
    """Driver errors as pgworker errors; a missing schema or table says how to make it."""
    try:
        yield
    except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedTable) as exc:
        raise PgWorkerError(
            f"the schema {schema!r} or its table is missing: start a worker "
            "(`manage.py pgworker`), which installs the worker schema and the results table "
            f"({exc.diag.message_primary})"
        ) from exc
    except psycopg.Error as exc:
        raise database_error(exc) from exc
