"""The worker side: a pgworker App whose tasks run the Django tasks of chosen queues."""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import Any

import msgspec
from django.db import close_old_connections
from django.utils import timezone

from pgworker.app import App
from pgworker.context import JobContext
from pgworker.controls import PermanentFailure
from pgworker.hooks import Plugin, WorkerInfo

from .compat import (
    FAILED,
    READY,
    RUNNING,
    SUCCESSFUL,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)
from .jobs import DjangoJob, task_identifier
from .results import Attempt, ResultsStore
from .state import load_task


def build_worker_app(
    alias: str = "default", queues: Iterable[str] | None = None, **app_options: Any
) -> App:
    """An App serving the Django queues ``queues`` of the task backend ``alias`` (all of
    the backend's QUEUES when None); ``app_options`` go to ``App`` (concurrency, ...).

    It is not opened. Its workers create the results table as they start (when results
    are on); ``prepare()`` does it beforehand, with the worker schema.
    """
    from .backend import PgWorkerBackend
    from .compat import BaseTaskBackend

    backend = task_backends[alias]
    if not isinstance(backend, PgWorkerBackend):
        raise TypeError(
            f"TASKS[{alias!r}] is a {type(backend).__name__}, not pgworker's backend"
            if isinstance(backend, BaseTaskBackend)
            else f"TASKS[{alias!r}] is not a task backend"
        )
    chosen = sorted(set(queues) if queues is not None else backend.queues)
    unknown = set(chosen) - backend.queues if backend.queues else set()
    if unknown:
        raise ValueError(f"the backend {alias!r} has no queues {sorted(unknown)}")
    settings = backend.settings
    app_options.setdefault("database_url", settings.conninfo())
    app_options.setdefault("embedded", False)
    app = App(schema=settings.schema, **app_options)
    store = backend.results if settings.results else None
    if store is not None:
        app.add_plugin(ResultsTable(app, store))
    for queue_name in chosen:
        app.task(task_identifier(queue_name))(DjangoDispatcher(store))
    return app


def prepare(app: App, alias: str = "default") -> None:
    """Install the worker schema and, when results are on, the results table (the app
    must be open)."""
    from .backend import PgWorkerBackend

    app.migrate()
    backend = task_backends[alias]
    if isinstance(backend, PgWorkerBackend) and backend.settings.results:
        with app.pool.connection() as conn:
            backend.results.create(conn)


class ResultsTable(Plugin):
    """Creates the results table when a worker of ``app`` starts, however it was started
    (``manage.py pgworker``, ``app.run()``, ``app.start()``)."""

    def __init__(self, app: App, store: ResultsStore) -> None:
        self.app = app
        self.store = store

    def on_worker_init(self, worker: WorkerInfo) -> None:
        """Create the results schema and table if missing."""
        with self.app.pool.connection() as conn:
            self.store.create(conn)


class DjangoDispatcher:
    """The function of a ``django:<queue>`` task: it imports the Django task a job names,
    calls it (an async one through Django's ``async_to_sync``), and records the attempt
    in the results store (when there is one). An exception is recorded, then re-raised,
    so that pgworker retries the job while attempts remain."""

    def __init__(self, store: ResultsStore | None) -> None:
        self.store = store

    def __call__(self, payload: DjangoJob, ctx: JobContext) -> None:
        """Run one job (Django's connections are refreshed around it, as around a request)."""
        close_old_connections()
        try:
            self._run(payload, ctx)
        finally:
            close_old_connections()

    def _run(self, payload: DjangoJob, ctx: JobContext) -> None:
        job = ctx.job
        final = job.attempts >= job.max_attempts
        try:
            task = load_task(payload)
        except TaskResultDoesNotExist as exc:
            self._record_failure(payload, ctx, exc, final=True, started=False)
            raise PermanentFailure(str(exc)) from exc
        attempt = self._record_start(payload, ctx)
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=payload.result_id,
            status=RUNNING,
            enqueued_at=job.created_at,
            started_at=attempt.started_at,
            last_attempted_at=attempt.last_attempted_at,
            finished_at=None,
            args=payload.args,
            kwargs=payload.kwargs,
            backend=payload.backend,
            errors=[_task_error(e) for e in attempt.errors],
            worker_ids=attempt.worker_ids,
        )
        task_started.send(type(self), task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *payload.args, **payload.kwargs)
            else:
                value = task.call(*payload.args, **payload.kwargs)
            return_json = msgspec.json.encode(normalize_json(value)).decode()
        except Exception as exc:
            error = self._record_failure(payload, ctx, exc, final=final, started=True)
            result.errors.append(error)
            object.__setattr__(result, "status", FAILED if final else READY)
            if final:
                object.__setattr__(result, "finished_at", timezone.now())
                task_finished.send(type(self), task_result=result)
            raise
        if self.store is not None:
            with ctx.connection() as conn:
                self.store.succeeded(conn, payload.result_id, return_json)
                self.store.expire_due(conn)
        object.__setattr__(result, "status", SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "_return_value", msgspec.json.decode(return_json))
        task_finished.send(type(self), task_result=result)

    def _record_start(self, payload: DjangoJob, ctx: JobContext) -> Attempt:
        """The attempt as the results store sees it (or as far as the job tells)."""
        job = ctx.job
        if self.store is None:
            now = timezone.now()
            workers = [""] * (job.attempts - 1) + [ctx.worker_id]
            return Attempt(started_at=now, last_attempted_at=now, worker_ids=workers, errors=[])
        with ctx.connection() as conn:
            return self.store.started(
                conn,
                id=payload.result_id,
                job_id=job.id,
                task_path=payload.task,
                backend=payload.backend,
                queue_name=payload.queue_name,
                priority=payload.priority,
                run_after=payload.run_after,
                args=msgspec.json.encode(payload.args).decode(),
                kwargs=msgspec.json.encode(payload.kwargs).decode(),
                enqueued_at=job.created_at,
                worker_id=ctx.worker_id,
            )

    def _record_failure(
        self, payload: DjangoJob, ctx: JobContext, exc: Exception, *, final: bool, started: bool
    ) -> TaskError:
        error = TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback="".join(traceback.format_exception(exc)),
        )
        if self.store is not None:
            record = {
                "exception_class_path": error.exception_class_path,
                "traceback": error.traceback,
            }
            if not started:
                self._record_start(payload, ctx)
            with ctx.connection() as conn:
                self.store.failed(
                    conn, payload.result_id, msgspec.json.encode(record).decode(), final=final
                )
                self.store.expire_due(conn)
        return error


def _task_error(record: dict[str, str]) -> TaskError:
    return TaskError(
        exception_class_path=record["exception_class_path"], traceback=record["traceback"]
    )
