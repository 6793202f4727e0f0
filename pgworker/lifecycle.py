"""The App's connection lifecycle: the database rule applied when it opens, the pool,
the embedded development server, and closing them again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from psycopg_pool import ConnectionPool

from .connections import Conninfo
from .database import open_pool
from .embedded import (
    EmbeddedServer,
    configured_database_url,
    embedded_allowed,
    no_database_error,
    start_embedded,
)
from .settings import default_schema
from .store import Connection, Store


class Lifecycle:
    """Opening and closing an App's connections (``with app:``). Nothing connects until
    ``open()``; the database is chosen then, by the rule in pgworker.embedded."""

    database_url: str | None
    embedded: bool
    _embedded: EmbeddedServer | None
    schema: str
    _schema_given: bool
    store: Store
    max_pool_size: int
    prepare_threshold: int | None
    pool_timeout: float
    _own_pool: bool
    _pool: ConnectionPool[Connection] | None

    @property
    def is_open(self) -> bool:
        """Whether the app has a pool to work with."""
        return self.store.pool is not None

    def open(self, database_url: str | None = None) -> Self:
        """Connect: check the database answers, then open the connection pool.

        ``database_url`` overrides the one given to the constructor. Opening an open app
        does nothing. Raises DatabaseUnavailableError with libpq's reason on failure.
        """
        if self.is_open:
            return self
        if database_url is not None:
            self.database_url = database_url
        self._settle_schema()
        url = configured_database_url(self.database_url)
        if url is None:
            if not (self.embedded and embedded_allowed()):
                raise no_database_error()
            self._embedded = start_embedded()
            url = self._embedded.url
        try:
            pool = open_pool(
                url,
                max_size=self.max_pool_size,
                timeout=self.pool_timeout,
                name=f"pgworker:{self.schema}",
                prepare_threshold=self.prepare_threshold,
            )
        except BaseException:
            self._release_embedded()
            raise
        self._pool = self.store.pool = pool
        return self

    def _settle_schema(self) -> None:
        """Fix the schema of an app that names none (GRAPHILE_WORKER_SCHEMA), as it opens."""
        if self._schema_given:
            return
        schema = default_schema()
        if schema != self.schema:
            self.schema = schema
            self.store = Store(None, schema)

    def close(self) -> None:
        """Close the pool the app opened (a pool given to the constructor stays open),
        and let go of the embedded server if the app started one."""
        if self._own_pool and self._pool is not None:
            self._pool.close()
            self._pool = self.store.pool = None
        self._release_embedded()

    def _release_embedded(self) -> None:
        if self._embedded is not None:
            self._embedded.release()
            self._embedded = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def conninfo(self) -> str:
        """The connection string the app's connections use (a Conninfo carrying the
        app's ``prepare_threshold`` to the worker's own connections)."""
        pool = self.store.pool
        if pool is not None and isinstance(pool.conninfo, str):
            return Conninfo(pool.conninfo, prepare_threshold=self.prepare_threshold)
        return Conninfo(self.database_url or "", prepare_threshold=self.prepare_threshold)

    @property
    def pool(self) -> ConnectionPool[Connection]:
        """The connection pool; the app must be open."""
        return self.store.require_pool()

    @contextmanager
    def _opened(self) -> Iterator[Self]:
        """The app, opened for the length of the block if it was closed before it."""
        if self.is_open:
            yield self
            return
        self.open()
        try:
            yield self
        finally:
            self.close()
