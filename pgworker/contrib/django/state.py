"""A Django TaskResult, assembled from a result's job and its row in the results store."""

from __future__ import annotations

from typing import Any

import msgspec
from django.utils.module_loading import import_string

from .compat import (
    FAILED,
    READY,
    RUNNING,
    SUCCESSFUL,
    Status,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
)
from .jobs import DjangoJob
from .results import JobRow, ResultRow


class JobError(Exception):
    """Stands for an error known only as graphile-worker's ``last_error`` text (results
    store off, or a failure outside the task function, such as a worker that died): its
    class was not recorded, and the TaskError's ``traceback`` holds that text."""


def status_of(job: JobRow | None, row: ResultRow | None) -> Status | None:
    """The status of a result, None if nothing is known of it.

    While graphile-worker holds the job, the job decides: locked is RUNNING, attempts used
    up is FAILED, anything else READY (waiting, or waiting for a retry). Once the job is
    gone (a success is deleted), the results store's row decides; a row that was never
    finished means the job was removed, and counts as FAILED.
    """
    if job is not None:
        if job.locked_at is not None:
            return RUNNING
        if job.attempts >= job.max_attempts:
            return FAILED
        return READY
    if row is None:
        return None
    if row.status in (SUCCESSFUL, FAILED):
        return Status(row.status)
    return FAILED


def build_result(
    alias: str, result_id: str, job: JobRow | None, row: ResultRow | None
) -> TaskResult[Any]:
    """The TaskResult of ``result_id`` from what the database holds; raises
    TaskResultDoesNotExist when it holds nothing (or the task can no longer be imported)."""
    status = status_of(job, row)
    if status is None:
        raise TaskResultDoesNotExist(result_id)
    if row is not None:
        spec = DjangoJob(
            task=row.task_path,
            args=row.args,
            kwargs=row.kwargs,
            result_id=row.id,
            backend=row.backend,
            queue_name=row.queue_name,
            priority=row.priority,
            run_after=row.run_after,
        )
    else:
        assert job is not None
        spec = msgspec.json.decode(job.payload, type=DjangoJob)
    result: TaskResult[Any] = TaskResult(
        task=load_task(spec),
        id=result_id,
        status=status,
        enqueued_at=job.created_at if job is not None else (row.enqueued_at if row else None),
        started_at=row.started_at if row is not None else None,
        last_attempted_at=_last_attempted_at(job, row),
        finished_at=row.finished_at if row is not None and status == row.status else None,
        args=spec.args,
        kwargs=spec.kwargs,
        backend=spec.backend or alias,
        errors=_errors(job, row),
        worker_ids=_worker_ids(job, row),
    )
    if status == SUCCESSFUL and row is not None:
        object.__setattr__(result, "_return_value", row.return_value)
    return result


def load_task(spec: DjangoJob) -> Task[Any, Any]:
    """The Django Task a job names, with the options it was enqueued with."""
    try:
        task = import_string(spec.task)
    except ImportError as exc:
        raise TaskResultDoesNotExist(
            f"{spec.result_id}: its task {spec.task!r} cannot be imported ({exc})"
        ) from exc
    if not isinstance(task, Task):
        raise TaskResultDoesNotExist(
            f"{spec.result_id}: {spec.task!r} is not a Django task (decorate it with @task)"
        )
    return task.using(
        priority=spec.priority,
        queue_name=spec.queue_name,
        run_after=spec.run_after,
        backend=spec.backend,
    )


def _last_attempted_at(job: JobRow | None, row: ResultRow | None) -> Any:
    if job is not None and job.locked_at is not None:
        return job.locked_at
    return row.last_attempted_at if row is not None else None


def _errors(job: JobRow | None, row: ResultRow | None) -> list[TaskError]:
    if row is not None:
        return [
            TaskError(exception_class_path=e["exception_class_path"], traceback=e["traceback"])
            for e in row.errors
        ]
    if job is not None and job.last_error:
        return [TaskError(exception_class_path=_JOB_ERROR_PATH, traceback=job.last_error)]
    return []


def _worker_ids(job: JobRow | None, row: ResultRow | None) -> list[str]:
    """One entry per attempt (Django counts attempts as ``len(worker_ids)``). Without a
    row, only the worker running the job now is known: earlier entries are empty."""
    if row is not None:
        return list(row.worker_ids)
    if job is None:
        return []
    known = [job.locked_by] if job.locked_by is not None else []
    return [""] * (job.attempts - len(known)) + known


_JOB_ERROR_PATH = f"{JobError.__module__}.{JobError.__qualname__}"
