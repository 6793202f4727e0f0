"""JobContext: what a running task knows about its job and can reach from it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .job import Job

if TYPE_CHECKING:
    from .app import App
    from .store import Connection


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

    def __repr__(self) -> str:
        return f"<JobContext job={self.job.id} task={self.job.task_identifier!r}>"
