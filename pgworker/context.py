"""JobContext: what a running task knows about its job and can reach from it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

from .errors import JobCancelledError, JobTimeoutError, UnknownExtensionError
from .job import Job
from .running import RunningJob

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

    A long sync task should look at ``cancelled`` (or call ``check()``) now and then:
    Python cannot stop a thread, so a timeout or a cancellation only asks it to stop.
    (An async task is cancelled for real.)
    """

    def __init__(
        self, job: Job, app: App, worker_id: str, running: RunningJob | None = None
    ) -> None:
        self.job = job
        self.app = app
        self.worker_id = worker_id
        self._running = running

    @cached_property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``pgworker.task.<identifier>``) that adds the job's id and task
        identifier to every record."""
        job = self.job
        return logging.LoggerAdapter(
            logging.getLogger(f"pgworker.task.{job.task_identifier}"),
            {"job_id": job.id, "task_identifier": job.task_identifier},
        )

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Borrow a connection from the worker's pool for the task's own queries."""
        with self.app.pool.connection() as conn:
            yield conn

    @property
    def cancelled(self) -> bool:
        """Whether the job should stop now: its timeout passed or it was cancelled."""
        return self._running is not None and self._running.stopping

    @property
    def time_left(self) -> float | None:
        """Seconds until the job's timeout (negative once past), None without one."""
        return None if self._running is None else self._running.seconds_left()

    def check(self) -> None:
        """Raise JobTimeoutError or JobCancelledError if the job should stop; call it
        between steps of a long task."""
        running = self._running
        if running is None or not running.stopping:
            return
        if running.cancel_reason is not None:
            raise JobCancelledError(f"cancelled: {running.cancel_reason}")
        raise JobTimeoutError(running.timeout or 0.0)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early if the job should stop; True if it
        should (a ``time.sleep`` that listens)."""
        if self._running is None:
            time.sleep(seconds)
            return False
        return self._running.wait(seconds)

    def get_ext(self, kind: type[E]) -> E:
        """The app's extension of type ``kind``: application state shared by tasks."""
        return self.app.extensions.get(kind)

    def __repr__(self) -> str:
        return f"<JobContext job={self.job.id} task={self.job.task_identifier!r}>"
