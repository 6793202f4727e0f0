"""StoreBase: the pool, error translation and job-row decoding every store part shares."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .errors import DatabaseError, DatabaseUnavailableError, JobNotCreatedError, PgWorkerError
from .job import Job, JobRowReader, job_row_reader
from .queries import Queries

#: Connections from psycopg_pool, with tuple rows.
Connection = psycopg.Connection[tuple[Any, ...]]
Cursor = psycopg.Cursor[tuple[Any, ...]]


class _HotCursor(threading.local):
    """Per thread: the cursor kept for the worker's per-batch statements, and its
    connection."""

    conn: Connection | None = None
    cursor: Cursor | None = None


class StoreBase:
    """What the statement groups of ``Store`` share: the pool, the named statements of one
    schema, the translation of driver errors, and the caches that name jobs' tasks and
    queues."""

    def __init__(self, pool: ConnectionPool[Connection] | None, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self.queries = Queries(schema)
        # Caches of names by id: ids come from identity sequences and are never reused.
        self._task_names: dict[int, str] = {}
        self._queue_names: dict[int, str] = {}
        # The reader of each statement's rows: its columns never change, and reading the
        # result's description costs more than decoding a claim's rows.
        self._readers: dict[str, JobRowReader] = {}
        self._hot = _HotCursor()

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

        Every driver error becomes a pgworker error here: a missing schema, an unreachable
        database (DatabaseUnavailableError), anything else a DatabaseError.
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
            raise database_error(exc) from exc

    def _hot_cursor(self, conn: Connection) -> Cursor:
        """A cursor on ``conn`` kept for the statements a worker runs once per batch
        (claim, complete): unlike a new cursor per statement, it keeps psycopg's adapters
        between executions instead of looking them up again each time. One per thread,
        so two threads sharing a connection never read each other's results; replaced
        when the thread's connection changes."""
        hot = self._hot
        cur = hot.cursor
        if cur is None or hot.conn is not conn or cur.closed:
            cur = hot.cursor = conn.cursor()
            hot.conn = conn
        return cur

    def _fetch_job_rows(
        self,
        conn: Connection,
        query: str,
        params: dict[str, Any] | None = None,
        *,
        hot: bool = False,
        statement: bytes | None = None,
    ) -> tuple[list[tuple[Any, ...]], JobRowReader]:
        """Run the statement ``query`` (or ``statement``, a variant of it with the same
        columns), which returns job rows; return them with their reader (``hot``: on the
        thread's kept cursor)."""
        sql = self.queries[query] if statement is None else statement
        cur = self._hot_cursor(conn).execute(sql, params) if hot else conn.execute(sql, params)
        rows = cur.fetchall()
        reader = self._readers.get(query)
        if reader is None:
            reader = self._readers[query] = job_row_reader(column_names(cur))
        return rows, reader

    def _jobs_from_rows(
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

    def _execute(
        self, query: str, params: dict[str, Any] | None = None, *, conn: Connection | None = None
    ) -> int:
        """Run the statement ``query`` on ``conn`` (default: a pool connection); return how
        many rows it changed."""
        with self.connection(conn) as c:
            return c.execute(self.queries[query], params).rowcount


#: What to do about the errors a caller meets most, by SQLSTATE.
_HINTS = {
    "25P02": "an earlier statement failed in the transaction you passed as conn=: "
    "roll it back first",
    "25006": "the transaction is read-only (a standby, or default_transaction_read_only): "
    "deferring and changing jobs need a writable primary",
    "42501": "the role lacks a privilege on the worker schema: "
    "grant it, or use the role that ran the migration",
}


def database_error(exc: psycopg.Error) -> DatabaseError:
    """A driver error no other pgworker error names, as a DatabaseError."""
    server_message = (exc.diag.message_primary or str(exc)).strip() or type(exc).__name__
    hint = _HINTS.get(exc.sqlstate or "")
    code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return DatabaseError(
        f"the database refused the statement{code}: {server_message}"
        + (f"; {hint}" if hint else ""),
        sqlstate=exc.sqlstate,
        server_message=server_message,
    )


def bigint_array(values: Iterable[int]) -> str:
    """``values`` as PostgreSQL's text form of a ``bigint[]``, for a parameter cast to
    one: much cheaper for psycopg to send than a list, which it inspects item by item."""
    return "{" + ",".join(map(str, values)) + "}"


def column_names(cur: psycopg.Cursor[Any]) -> tuple[str, ...]:
    """The names of the columns of ``cur``'s current result."""
    return tuple(column.name for column in cur.description or ())
