"""JobContext: what a running task knows about its job and can reach from it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from .errors import UnknownExtensionError
from .job import Job

if TYPE_CHECKING:
    from .app import App
    from .store import Connection


E = TypeVar("E")


class Extensions:
    """Application state handed to tasks, one object per type."""

    def __init__(self, extensions: Iterable[object] = ()) -> None:
        self._by_type: dict[type, object] = {}
        for extension in extensions:
            self.add(extension)

    def add(self, extension: object) -> None:
        """Register ``extension`` under its type (replacing one of the same type)."""
        self._by_type[type(extension)] = extension

    def get(self, kind: type[E]) -> E:
        """The extension of type ``kind`` (or of a subclass of it)."""
        found = self._by_type.get(kind)
        if found is None:
            found = next((e for e in self._by_type.values() if isinstance(e, kind)), None)
        if found is None:
            known = ", ".join(t.__name__ for t in self._by_type) or "none"
            raise UnknownExtensionError(
                f"no extension of type {kind.__name__} (registered: {known}); "
                "add it with App(extensions=[...]) or app.add_extension(...)"
            )
        return found  # type: ignore[return-value]


class JobContext:
    """Handed to a task as its second argument, when the task takes one.

    ``job`` is the job being run (id, identifier, attempts, queue_name, key, ...),
    ``logger`` logs with the job's id and identifier attached, and ``app`` is the app
    running it, for deferring follow-up jobs.
    """

    def __init__(self, job: Job, app: App, worker_id: str) -> None:
        self.job = job
        self.app = app
        self.worker_id = worker_id
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"pgworker.task.{job.task_identifier}"),
            {"job_id": job.id, "task_identifier": job.task_identifier},
        )

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Borrow a connection from the worker's pool for the task's own queries."""
        with self.app.pool.connection() as conn:
            yield conn

    def get_ext(self, kind: type[E]) -> E:
        """The app's extension of type ``kind``: application state shared by tasks."""
        return self.app.extensions.get(kind)

    def __repr__(self) -> str:
        return f"<JobContext job={self.job.id} task={self.job.task_identifier!r}>"
