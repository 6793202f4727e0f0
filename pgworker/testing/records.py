"""DeferredJob and JobRun: what the testing helpers report about jobs."""

from __future__ import annotations

from typing import Any

import msgspec

from ..job import Job


class DeferredJob(msgspec.Struct, frozen=True):
    """A deferred job with its payload, as ``deferred_jobs`` and ``assert_deferred``
    find it.

    ``payload`` is the decoded JSON (dicts and lists, as stored). ``state`` is the job's
    state in the database (``waiting``, ``scheduled``, ``running``, ``retrying``,
    ``permanently_failed``); in eager mode, ``completed``, ``failed`` (``error`` says
    why), ``not_run`` (no task of that name on the app) or ``waiting`` (dropped when an
    earlier job failed).
    """

    job: Job
    payload: Any
    state: str
    error: str | None = None

    def describe(self) -> str:
        """One line for a failure message: id, task, payload and the options set."""
        job = self.job
        options = [f"state={self.state}"]
        if job.queue_name is not None:
            options.append(f"queue={job.queue_name!r}")
        if job.priority:
            options.append(f"priority={job.priority}")
        if job.key is not None:
            options.append(f"job_key={job.key!r}")
        if job.flags:
            options.append(f"flags={job.flags!r}")
        if job.max_attempts != 25:
            options.append(f"max_attempts={job.max_attempts}")
        payload = msgspec.json.encode(self.payload).decode()
        return f"#{job.id} {job.task_identifier} {payload} ({', '.join(options)})"


class JobRun(msgspec.Struct, frozen=True):
    """One job that ``run_jobs`` ran, and how it ended.

    ``outcome`` is ``completed``, ``failed`` (it will be retried), ``permanently_failed``
    or ``snoozed``; ``error`` and ``traceback`` say why a job failed (or snoozed).
    """

    job: Job
    payload: Any
    outcome: str
    error: str | None = None
    traceback: str | None = None
    duration_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        """Whether the job completed."""
        return self.outcome == "completed"
