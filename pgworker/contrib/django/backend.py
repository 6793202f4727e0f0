"""PgWorkerBackend: a django.tasks backend that enqueues Django tasks as pgworker jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connections, transaction
from django.utils import timezone

from pgworker.app import App
from pgworker.connections import connect
from pgworker.job import Job
from pgworker.spec import JobSpec

from .compat import READY, BaseTaskBackend, InvalidTask, Task, TaskResult, task_enqueued
from .jobs import DjangoJob, job_key, task_identifier, to_graphile_priority
from .options import QUEUE_NAME, BackendOptions
from .results import ResultsStore
from .state import build_result


class PgWorkerBackend(BaseTaskBackend):
    """Runs Django tasks on pgworker: ``enqueue`` adds a graphile-worker job (in Django's
    transaction when Django uses psycopg 3 on the same database), ``manage.py pgworker``
    runs them, ``get_result`` reads the job and the optional results store.

    Settings: ``TASKS = {"default": {"BACKEND": "pgworker.contrib.django.PgWorkerBackend",
    "QUEUES": [...], "OPTIONS": {...}}}``; the OPTIONS are described in docs/django.md.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.settings = BackendOptions.from_params(alias, self.options)
        for queue_name in self.queues:
            if not QUEUE_NAME.fullmatch(queue_name):
                raise InvalidTask(
                    f"queue name {queue_name!r} of backend {alias!r}: use 1 to 100 letters, "
                    "digits and _ : / . - (it becomes part of a pgworker task identifier)"
                )
        # Never opened: it checks and encodes payloads, runs defer hooks and writes on the
        # connection it is given.
        self.app = App(schema=self.settings.schema, embedded=False)
        self.results = ResultsStore(
            self.settings.schema, self.settings.results_schema, self.settings.results_ttl
        )

    def validate_task(self, task: Task[Any, Any]) -> None:
        """Django's checks, plus: a queue name that fits in a task identifier."""
        super().validate_task(task)
        if not QUEUE_NAME.fullmatch(task.queue_name):
            raise InvalidTask(
                f"queue name {task.queue_name!r}: use 1 to 100 letters, digits and _ : / . -"
            )

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Add a job for ``task(*args, **kwargs)`` and return its READY result.

        When the queue is in Django's database and Django runs on psycopg 3, the job is
        added through Django's connection: inside ``atomic()`` it exists only if the block
        commits. Otherwise (psycopg2, or OPTIONS['DATABASE_URL'] naming another database)
        it is added once Django's transaction commits (``on_commit``), on a connection of
        its own: a rollback adds nothing, but a crash between commit and enqueue loses it.
        """
        self.validate_task(task)
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=uuid.uuid4().hex,
            status=READY,
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        payload = DjangoJob(
            task=task.module_path,
            args=result.args,
            kwargs=result.kwargs,
            result_id=result.id,
            backend=self.alias,
            queue_name=task.queue_name,
            priority=task.priority,
            run_after=task.run_after,
        )
        spec = JobSpec(
            run_at=task.run_after,
            priority=to_graphile_priority(task.priority),
            max_attempts=self.settings.max_attempts,
            job_key=job_key(result.id),
        )
        identifier = task_identifier(task.queue_name)
        if self.settings.shares_django_transaction():
            job = self.app.add_job(identifier, payload, spec, conn=self._django_connection())
            object.__setattr__(result, "enqueued_at", job.created_at)
        else:
            transaction.on_commit(
                lambda: self._add_job_apart(identifier, payload, spec),
                using=self.settings.database,
            )
            object.__setattr__(result, "enqueued_at", timezone.now())
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The result ``result_id``: from its job while graphile-worker holds it (READY,
        RUNNING, READY again between retries, FAILED once attempts are used up), then
        from the results store (SUCCESSFUL with the return value, FAILED with the
        exception). Raises TaskResultDoesNotExist when neither knows it."""
        with self._connection() as conn:
            job = self.results.job(conn, job_key(result_id))
            row = self.results.get(conn, result_id) if self.settings.results else None
        return build_result(self.alias, result_id, job, row)

    def _add_job_apart(self, identifier: str, payload: DjangoJob, spec: JobSpec) -> Job:
        with connect(self.settings.conninfo()) as conn:
            return self.app.add_job(identifier, payload, spec, conn=conn)

    def _django_connection(self) -> psycopg.Connection[Any]:
        """The psycopg 3 connection under the Django database's connection."""
        connection = connections[self.settings.database]
        connection.ensure_connection()
        raw = connection.connection
        if not isinstance(raw, psycopg.Connection):  # pragma: no cover - checked before
            raise TypeError(f"the Django database {self.settings.database!r} is not psycopg 3")
        return raw

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Django's own connection when it can be shared (reads then see the jobs of the
        open transaction), else a connection of its own for the length of the block."""
        if self.settings.shares_django_transaction():
            yield self._django_connection()
            return
        with connect(self.settings.conninfo()) as conn:
            yield conn
