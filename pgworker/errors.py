"""The exception tree: everything pgworker raises on purpose derives from PgWorkerError."""

from __future__ import annotations

import psycopg


class PgWorkerError(Exception):
    """Base class of every error pgworker raises on purpose."""


class ConfigurationError(PgWorkerError):
    """A setting is missing or invalid; the message says which one and how to fix it."""


class WorkerIdInUseError(ConfigurationError):
    """Another live worker is registered under the worker id this one was given."""


class DatabaseUnavailableError(PgWorkerError, psycopg.OperationalError):
    """The database could not be reached (also a ``psycopg.OperationalError``, so code
    that retries on those keeps working)."""


class DatabaseError(PgWorkerError, psycopg.Error):
    """The database refused a statement for a reason pgworker has no better name for
    (also a ``psycopg.Error``, so code that catches those keeps working).

    ``sqlstate`` is PostgreSQL's error code (``25006``; None for a client-side error)
    and ``server_message`` the server's (or the driver's) message; the driver's exception
    is the ``__cause__``.
    """

    def __init__(self, message: str, *, sqlstate: str | None, server_message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.server_message = server_message


class MigrationError(PgWorkerError):
    """The worker schema could not be installed or upgraded."""


class IncompatibleSchemaError(MigrationError):
    """The database holds a breaking schema revision newer than this pgworker understands."""


class PayloadError(PgWorkerError, ValueError):
    """A payload does not match its task's payload type.

    ``path`` names the offending field (``$.message``) when it is known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class JobNotCreatedError(PgWorkerError):
    """``add_job`` returned no row; the job was not created."""


class UnknownExtensionError(PgWorkerError, LookupError):
    """No extension of the requested type is registered on the app."""


class JobTimeoutError(PgWorkerError, TimeoutError):
    """A job ran longer than its timeout and was cancelled (also a ``TimeoutError``).

    ``timeout`` is the limit in seconds.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g} s")
        self.timeout = timeout


class JobCancelledError(PgWorkerError):
    """The job was cancelled while it ran (``app.admin.cancel``, ``pgworker cancel``);
    raised inside a task by ``ctx.check()``. A job that ends with it is not retried."""
