"""DefinerStatements: the store's statements for the SECURITY DEFINER enqueue functions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import msgspec
import psycopg

from .errors import ConfigurationError, JobNotCreatedError, MigrationError, PgWorkerError
from .job import Job
from .queries import bind_names, parse_named_queries, read_sql_file
from .settings import check_schema, derived_schema
from .spec import JobSpec
from .store import NewJob, spec_options, spec_record
from .store_base import Connection, StoreBase
from .store_fast import requested_job

#: What the enqueue schema is called when nobody names it: the worker schema's name
#: with this suffix (``graphile_worker_enqueue``).
ENQUEUE_SCHEMA_SUFFIX = "_enqueue"


def default_enqueue_schema(schema: str) -> str:
    """The enqueue schema of the worker schema ``schema`` when none is named."""
    return derived_schema(
        schema, ENQUEUE_SCHEMA_SUFFIX, "an enqueue schema", "name one with enqueue_schema="
    )


class DefinerStatements:
    """Installs, grants and calls the enqueue functions of ``enqueue_schema``, which add
    jobs to ``store``'s worker schema on behalf of roles with no privilege on it.

    Statements run on ``store``'s connections, with its translation of driver errors.
    """

    def __init__(self, store: StoreBase, enqueue_schema: str) -> None:
        check_schema(enqueue_schema)
        if enqueue_schema == store.schema:
            raise ConfigurationError(
                f"the enqueue functions can't live in the worker schema {store.schema!r}, "
                "which stays as graphile-worker made it: name another enqueue_schema"
            )
        self.store = store
        self.enqueue_schema = enqueue_schema
        self._texts = parse_named_queries(read_sql_file("enqueue.sql"))
        names = {"ENQUEUE": enqueue_schema, "SCHEMA": store.schema}
        self._calls = {
            name: bind_names(self._texts[name], names).as_bytes(None)
            for name in ("definer_add_job", "definer_add_jobs")
        }

    # -- setting up (the worker schema's owner) -----------------------------------------

    def grant(self, role: str, *, revoke: bool = False) -> None:
        """Install (or update) the functions, then let ``role`` call them (``revoke``:
        stop letting it). Must run as the role that owns the worker schema."""
        with self.store.connection() as conn, conn.transaction(), self._explained(role):
            row = conn.execute(
                self._texts["schema_owner"].encode(), {"schema": self.store.schema}
            ).fetchone()
            if row is None:
                raise MigrationError(
                    f"the worker schema {self.store.schema!r} is not installed: run "
                    "`pgworker migrate` (as the role that will own it) first"
                )
            owner, current = row
            if owner != current:
                raise ConfigurationError(
                    f"connect as {owner!r}, the owner of the worker schema "
                    f"{self.store.schema!r}, to grant enqueueing (not as {current!r}): the "
                    "functions run with the privileges of the role that creates them"
                )
            names = {"ENQUEUE": self.enqueue_schema, "SCHEMA": self.store.schema, "ROLE": role}
            conn.execute(bind_names(self._texts["install_functions"], names))
            statement = "revoke_enqueue" if revoke else "grant_enqueue"
            conn.execute(bind_names(self._texts[statement], names))

    @contextmanager
    def _explained(self, role: str) -> Iterator[None]:
        """The errors of granting, said in terms of what to do."""
        try:
            yield
        except psycopg.errors.UndefinedObject as exc:
            raise ConfigurationError(
                f"cannot grant enqueueing to {role!r}: {exc.diag.message_primary}"
            ) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"cannot install the enqueue functions in {self.enqueue_schema!r} "
                f"({exc.diag.message_primary}): that schema must belong to the worker "
                "schema's owner, or not exist yet"
            ) from exc

    # -- adding jobs (any role granted) ---------------------------------------------------

    def add_job(
        self, identifier: str, payload: str, spec: JobSpec, conn: Connection | None = None
    ) -> Job:
        """Add one job through the definer ``add_job``; see ``requested_job`` for what
        the returned Job holds."""
        params = {
            "identifier": identifier,
            "payload": payload,
            **spec_options(spec),
            "job_key_mode": spec.job_key_mode or "replace",
        }
        with self.store.connection(conn) as c, self._missing_functions():
            row = c.execute(self._calls["definer_add_job"], params).fetchone()
        if row is None or row[0] is None:
            raise JobNotCreatedError(
                f"add_job created no {identifier!r} job (a worker took the keyed job "
                "meanwhile?): try again"
            )
        return requested_job(row[0], row[1], identifier, spec)

    def add_jobs(
        self, jobs: Sequence[NewJob], *, preserve_run_at: bool, conn: Connection | None = None
    ) -> list[Job]:
        """Add a batch through the definer ``add_jobs``, in one statement."""
        if not jobs:
            return []
        specs = msgspec.json.encode([spec_record(new) for new in jobs]).decode()
        params = {"specs": specs, "preserve_run_at": preserve_run_at}
        with self.store.connection(conn) as c, self._missing_functions():
            rows = c.execute(self._calls["definer_add_jobs"], params).fetchall()
        if len(rows) != len(jobs):
            raise JobNotCreatedError(f"add_jobs created {len(rows)} of {len(jobs)} jobs")
        return [
            requested_job(job_id, added_at, new.identifier, new.spec)
            for (job_id, added_at), new in zip(rows, jobs, strict=True)
        ]

    @contextmanager
    def _missing_functions(self) -> Iterator[None]:
        """A missing or forbidden enqueue function, said in terms of what to do (before
        the store calls it a missing worker schema)."""
        try:
            yield
        except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction) as exc:
            raise PgWorkerError(
                f"the enqueue functions of {self.enqueue_schema!r} are not installed "
                f"({exc.diag.message_primary}): the worker schema's owner installs them "
                "with `pgworker grant-enqueue ROLE` (or app.grant_enqueue(role))"
            ) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PgWorkerError(
                f"this role may not add jobs through {self.enqueue_schema!r} "
                f"({exc.diag.message_primary}): the worker schema's owner grants it with "
                "`pgworker grant-enqueue ROLE` (or app.grant_enqueue(role))"
            ) from exc
