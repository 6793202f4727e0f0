"""The backend's OPTIONS, read once from ``settings.TASKS``, and the queue's database."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from psycopg.conninfo import make_conninfo

from pgworker.settings import default_schema
from pgworker.spec import SMALLINT_MAX

#: The task identifier of a Django queue's jobs is this prefix and the queue name.
IDENTIFIER_PREFIX = "django:"
#: The job key of a Django task result's job is this prefix and the result id.
JOB_KEY_PREFIX = "django:"
#: Django queue names that fit in a task identifier (pgworker's identifier characters).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_:/.\-]{1,100}")
#: How long a result is kept after its last change, by default: one week.
DEFAULT_RESULTS_TTL = 7 * 24 * 3600.0
#: graphile-worker's own default number of attempts.
DEFAULT_MAX_ATTEMPTS = 25
_KNOWN = {"SCHEMA", "DATABASE", "DATABASE_URL", "MAX_ATTEMPTS", "RESULTS", "RESULTS_TTL"}


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """One backend's OPTIONS (see docs/django.md): the worker schema, the Django database
    the queue lives in (or a URL of another one), attempts, and the results store."""

    schema: str
    database: str
    database_url: str | None
    max_attempts: int
    results: bool
    results_ttl: float

    @property
    def results_schema(self) -> str:
        """The schema of the results table: pgworker's own, beside the worker schema."""
        return f"{self.schema}_results"

    @classmethod
    def from_params(cls, alias: str, options: Mapping[str, Any]) -> BackendOptions:
        """Read and check OPTIONS; errors are ImproperlyConfigured naming the backend."""
        unknown = set(options) - _KNOWN
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {sorted(unknown)}; "
                f"pgworker's backend knows {sorted(_KNOWN)}"
            )
        schema = options.get("SCHEMA") or default_schema()
        if not isinstance(schema, str) or len(f"{schema}_results") > 63:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['SCHEMA'] must be a schema name of at most 55 "
                f"characters (its results schema adds '_results'), got {schema!r}"
            )
        max_attempts = options.get("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
        if not isinstance(max_attempts, int) or not 1 <= max_attempts <= SMALLINT_MAX:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['MAX_ATTEMPTS'] must be 1 to {SMALLINT_MAX}, "
                f"got {max_attempts!r}"
            )
        ttl = options.get("RESULTS_TTL", DEFAULT_RESULTS_TTL)
        if not isinstance(ttl, int | float) or ttl <= 0:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['RESULTS_TTL'] must be positive seconds, got {ttl!r}"
            )
        url = options.get("DATABASE_URL")
        if url is not None and not isinstance(url, str):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['DATABASE_URL'] must be text")
        return cls(
            schema=schema,
            database=str(options.get("DATABASE", "default")),
            database_url=url,
            max_attempts=max_attempts,
            results=bool(options.get("RESULTS", True)),
            results_ttl=float(ttl),
        )

    def conninfo(self) -> str:
        """The queue's database: DATABASE_URL, else the Django database's own settings."""
        if self.database_url is not None:
            return self.database_url
        connection = connections[self.database]
        if connection.vendor != "postgresql":
            raise ImproperlyConfigured(
                f"the Django database {self.database!r} is {connection.vendor}, not PostgreSQL: "
                "set OPTIONS['DATABASE_URL'] to the queue's database"
            )
        libpq = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
        params = connection.get_connection_params()
        return make_conninfo(**{k: v for k, v in params.items() if k in libpq and v is not None})

    def shares_django_transaction(self) -> bool:
        """Whether enqueueing can join the Django database's transaction: the queue is in
        that database and Django talks to it through psycopg 3."""
        if self.database_url is not None:
            return False
        connection = connections[self.database]
        return connection.vendor == "postgresql" and _is_psycopg3()


def _is_psycopg3() -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)
