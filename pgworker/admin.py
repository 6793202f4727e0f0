"""Admin: what an operator does to jobs (remove, complete, fail, unlock, clean up) and reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

from .errors import ConfigurationError
from .job import Job
from .spec import SMALLINT_MIN, check_run_at, check_smallint

if TYPE_CHECKING:  # the store returns this module's values: no import cycle at run time
    from .store import Store
    from .store_control import CancelOutcome
    from .store_recovery import RegisteredWorker

JobState = Literal["waiting", "scheduled", "running", "retrying", "permanently_failed"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)


class ListedJob(msgspec.Struct, frozen=True):
    """A job with its derived state, as ``Admin.jobs`` lists it."""

    job: Job
    state: JobState


class StatRow(msgspec.Struct, frozen=True):
    """How many jobs of one task, in one queue (None: no queue), are in one state."""

    task_identifier: str
    queue_name: str | None
    state: JobState
    count: int


class CleanupResult(msgspec.Struct, frozen=True):
    """How many rows each cleanup step deleted (None: the step did not run)."""

    permanently_failed_jobs: int | None = None
    job_queues: int | None = None
    task_identifiers: int | None = None


class Admin:
    """Operations on jobs for operators and scripts; ``app.admin`` on an open app.

    The functions that change jobs are graphile-worker's SQL functions, so they leave
    alone any job locked in the last 4 hours: a job that is running cannot be completed,
    failed or rescheduled from outside.
    """

    def __init__(self, store: Store, *, known_tasks: Sequence[str] = ()) -> None:
        self.store = store
        #: The identifiers of the app's own tasks, which ``cleanup`` always keeps.
        self.known_tasks = tuple(known_tasks)

    # -- changes ----------------------------------------------------------------------

    def remove_job(self, job_key: str) -> Job | None:
        """Delete the pending job holding ``job_key``; a running one loses its key and will
        not be retried. Returns the job, or None when no job has the key."""
        return self.store.remove_job(job_key)

    def complete_jobs(self, job_ids: Sequence[int]) -> list[Job]:
        """Delete these jobs as if they had succeeded; returns those deleted."""
        return self.store.admin_complete_jobs(job_ids)

    def permanently_fail_jobs(self, job_ids: Sequence[int], reason: str | None = None) -> list[Job]:
        """Use up every attempt of these jobs (they stay, never to run), with ``reason`` as
        ``last_error``; returns those changed."""
        return self.store.permanently_fail_jobs(job_ids, reason)

    def reschedule_jobs(
        self,
        job_ids: Sequence[int],
        *,
        run_at: datetime | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        max_attempts: int | None = None,
    ) -> list[Job]:
        """Change these jobs' run_at, priority, attempts or max_attempts; None keeps a
        value, and 0 is a value. Returns the jobs changed."""
        if run_at is not None:
            check_run_at(run_at)
        for name, value, low in (
            ("priority", priority, SMALLINT_MIN),
            ("attempts", attempts, 0),
            ("max_attempts", max_attempts, 1),
        ):
            if value is not None:
                check_smallint(name, value, low)
        return self.store.reschedule_jobs(
            job_ids, run_at=run_at, priority=priority, attempts=attempts, max_attempts=max_attempts
        )

    def force_unlock_workers(self, worker_ids: Sequence[str]) -> int:
        """Release every job and queue locked by these workers; returns how many jobs they
        held. Only for dead workers: a live one would go on running jobs that others may
        now take too."""
        return self.store.force_unlock_workers(worker_ids)

    def cleanup(
        self,
        *,
        delete_permanently_failed_jobs: bool = False,
        gc_job_queues: bool = False,
        gc_task_identifiers: bool = False,
        task_identifiers_to_keep: Sequence[str] = (),
    ) -> CleanupResult:
        """Delete what is no longer needed, as graphile-worker's cleanup tasks do, in this
        order: permanently failed jobs that are not running (DELETE_PERMAFAILED_JOBS),
        unlocked queues with no jobs (GC_JOB_QUEUES), task identifiers no job uses
        (GC_TASK_IDENTIFIERS).

        Workers cache task ids, so the identifiers a running worker knows must stay: those
        of this app's tasks (``app.admin``), of any registered pgworker worker, and
        ``task_identifiers_to_keep`` are kept. Node workers don't register: keep theirs
        in ``task_identifiers_to_keep``, or stop them first."""
        return self.store.cleanup(
            delete_permanently_failed_jobs=delete_permanently_failed_jobs,
            gc_job_queues=gc_job_queues,
            gc_task_identifiers=gc_task_identifiers,
            task_identifiers_to_keep=[*self.known_tasks, *task_identifiers_to_keep],
        )

    # -- reads ------------------------------------------------------------------------

    def jobs(
        self,
        *,
        task: str | None = None,
        queue: str | None = None,
        job_key: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[ListedJob]:
        """Jobs matching every filter given, oldest first (``newest_first``: the other
        way), ``limit`` of them after skipping ``offset`` (a page of a listing)."""
        if state is not None and state not in JOB_STATES:
            raise ConfigurationError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, got {limit}")
        if offset < 0:
            raise ConfigurationError(f"offset must not be negative, got {offset}")
        return self.store.list_jobs(
            task=task,
            queue=queue,
            job_key=job_key,
            state=state,
            limit=limit,
            offset=offset,
            newest_first=newest_first,
        )

    def job(self, job_id: int) -> ListedJob | None:
        """One job by id, or None."""
        found = self.store.list_jobs(job_id=job_id, limit=1)
        return found[0] if found else None

    def missing_job_ids(self, job_ids: Sequence[int]) -> list[int]:
        """Those of these ids that name no job, sorted: what a change that left some ids
        out cannot blame on a lock."""
        return sorted(set(job_ids) - self.store.existing_job_ids(job_ids))

    def payload(self, job_id: int) -> Any:
        """The decoded JSON payload of one job, or None if there is no such job."""
        payload = self.store.job_payload(job_id)
        return None if payload is None else msgspec.json.decode(payload)

    def stats(self) -> list[StatRow]:
        """Job counts by task, queue and state. Counts every job: fine for an operator,
        too heavy to poll on a large table."""
        return self.store.job_stats()

    def workers(self) -> list[RegisteredWorker]:
        """Every worker in the registry (pgworker and Rust workers register; Node workers
        don't), and every lock owner missing from it, oldest start first."""
        return self.store.list_workers()

    def unserved_tasks(self) -> dict[str, int]:
        """Task identifiers with runnable jobs that no registered worker runs, with how
        many jobs each has waiting (a Node worker may still run them: it doesn't say)."""
        return self.store.unserved_tasks()

    def cancel(self, job_id: int, reason: str = "cancelled by an operator") -> CancelOutcome:
        """Cancel a job so that it never runs (again): one that isn't running is deleted
        (``"removed"``); a running one is asked to stop (``"cancelling"``): an async task
        is cancelled at once, a sync one sees ``ctx.cancelled``. Either way it then fails
        with ``Cancelled: <reason>`` and is not retried (unless its code finishes first,
        when it completes). ``"not_found"`` when there is no such job."""
        outcome, _ = self.store.request_cancel(job_id, reason)
        return outcome
