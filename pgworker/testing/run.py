"""run_jobs: run every due job in the calling thread, follow-ups included, and report."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from ..completer import failure_record, report_outcome
from ..context import JobContext
from ..errors import PgWorkerError
from ..outcome import Outcome
from ..runner import JobRunner, StartedJob
from ..running import RunningJob
from ..store import ClaimedJob
from .eager import run_coroutine
from .records import JobRun

if TYPE_CHECKING:
    from ..app import App

#: How many rounds ``run_jobs`` makes by default before it gives up on an endless chain.
MAX_ROUNDS = 100
#: How many jobs one round claims at most.
ROUND_SIZE = 1000


class JobsFailed(AssertionError):
    """Raised by ``run_jobs`` (after every due job ran) when some of them failed: the
    message lists each with its payload, error and traceback. ``result`` holds them all."""

    def __init__(self, result: RunResult) -> None:
        failed = result.failed
        lines = [f"{len(failed)} of {len(result)} job(s) failed:"]
        for run in failed:
            payload = msgspec.json.encode(run.payload).decode()
            lines.append(f"- #{run.job.id} {run.job.task_identifier} {payload}: {run.error}")
            if run.traceback:
                lines.extend("    " + line for line in run.traceback.splitlines())
        super().__init__("\n".join(lines))
        self.result = result


class RunawayJobsError(PgWorkerError):
    """Raised by ``run_jobs`` when jobs are still runnable after ``max_rounds`` rounds."""


class RunResult:
    """What one ``run_jobs`` call ran, in order: iterate it, or use ``ids``,
    ``identifiers``, ``completed`` and ``failed``."""

    def __init__(self, runs: list[JobRun], rounds: int) -> None:
        #: Every job run, in the order it ran.
        self.runs = runs
        #: How many rounds it took (a round runs what was runnable when it began).
        self.rounds = rounds

    def __iter__(self) -> Iterator[JobRun]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def ids(self) -> list[int]:
        """The ids of the jobs run, in order."""
        return [run.job.id for run in self.runs]

    @property
    def identifiers(self) -> list[str]:
        """The task identifier of each job run, in order."""
        return [run.job.task_identifier for run in self.runs]

    @property
    def completed(self) -> list[JobRun]:
        """The jobs that completed."""
        return [run for run in self.runs if run.succeeded]

    @property
    def failed(self) -> list[JobRun]:
        """The jobs that failed (whether or not they will be retried)."""
        return [run for run in self.runs if run.outcome in ("failed", "permanently_failed")]

    def __repr__(self) -> str:
        return (
            f"<RunResult {len(self.completed)} completed, {len(self.failed)} failed, "
            f"{self.rounds} round(s)>"
        )


def run_jobs(app: App, *, max_rounds: int = MAX_ROUNDS, raise_on_failure: bool = True) -> RunResult:
    """Run every job of ``app``'s tasks that is runnable now, one at a time in the calling
    thread, then those that became runnable meanwhile (jobs the first ones deferred, the
    next job of a named queue), until none is left; return what ran.

    Jobs run as a worker runs them (payload decoding, plugins, ``Retry``, ``Snooze``,
    ``BatchResult``, outcomes written to the database), except that a sync task's
    ``timeout`` is not watched (an async task's is). A failed job is retried later, as
    usual, so it does not run twice here; jobs scheduled for later stay.

    ``app`` must be open, with its schema migrated (the ``pgworker_app`` fixture is).
    When some jobs failed, raises JobsFailed listing their errors and tracebacks, after
    running everything else (``raise_on_failure=False`` returns them in the result).
    Raises RunawayJobsError if jobs are still runnable after ``max_rounds`` rounds (a
    task that defers itself every time, or retries with no delay).
    """
    if not app.is_open:
        raise PgWorkerError(
            "run_jobs needs an open app with its schema migrated: `with app:` and "
            "app.migrate() (the pgworker_app fixture does both)"
        )
    worker_id = f"pgworker-testing-{secrets.token_hex(6)}"
    store = app.store
    task_names = store.register_tasks(sorted(app.tasks)) if app.tasks else {}
    runner = JobRunner(
        app.tasks,
        app.hooks,
        lambda running: JobContext(running.job, app, worker_id, running),
        default_timeout=app.default_timeout,
    )
    runs: list[JobRun] = []
    rounds = 0
    try:
        while task_names:
            claimed = store.claim_jobs(
                worker_id=worker_id,
                task_names=task_names,
                limit=ROUND_SIZE,
                forbidden_flags=app.current_forbidden_flags(),
            )
            if not claimed:
                break
            if rounds == max_rounds:
                store.return_jobs([c.job.id for c in claimed], worker_id=worker_id)
                names = sorted({c.job.task_identifier for c in claimed})
                raise RunawayJobsError(
                    f"run_jobs stopped after {max_rounds} rounds ({len(runs)} jobs run) with "
                    f"jobs still runnable (tasks {', '.join(names)}): does a task defer "
                    "itself every time, or retry or snooze with no delay? Pass a larger "
                    "max_rounds if this chain is meant to be that long"
                )
            rounds += 1
            for job in claimed:
                runs.append(_run_one(app, runner, job, worker_id))
    finally:
        store.unlock_worker(worker_id)  # jobs left claimed by an interruption run again
    result = RunResult(runs, rounds)
    if raise_on_failure and result.failed:
        raise JobsFailed(result)
    return result


def _run_one(app: App, runner: JobRunner, claimed: ClaimedJob, worker_id: str) -> JobRun:
    """Run one claimed job, write its outcome as the completer would, tell the plugins."""
    running = RunningJob(claimed.job, runner.timeout_for(claimed.job))
    started = time.perf_counter()
    task = runner.tasks[claimed.job.task_identifier]
    if task.is_async:
        step = runner.begin(claimed, started, running)
        outcome = _run_async(runner, step) if isinstance(step, StartedJob) else step
    else:
        outcome = runner.run(claimed, running)
    _record(app, outcome, worker_id)
    return _job_run(outcome, claimed.payload)


def _run_async(runner: JobRunner, step: StartedJob) -> Outcome:
    """Await an async task's call (with its timeout, if it has one) and end the step."""
    raised: BaseException | None = None
    returned: Any = None
    coroutine = step.task.call_async(step.payload, runner.context_for(step))
    timeout = step.running.timeout
    try:
        returned = run_coroutine(asyncio.wait_for(coroutine, timeout))
    except TimeoutError as exc:
        if timeout is not None:
            step.running.expire()
        raised = exc
    except Exception as exc:
        raised = exc
    return runner.end(step, raised, returned=returned)


def _record(app: App, outcome: Outcome, worker_id: str) -> None:
    """Write the outcome to the database, log it and tell the plugins, as a worker does."""
    if outcome.error is None:
        app.store.complete_jobs([outcome.job.id], worker_id=worker_id)
    else:
        app.store.fail_jobs([failure_record(outcome)], worker_id=worker_id)
    outcome.log()
    report_outcome(app.hooks, outcome)


def _job_run(outcome: Outcome, payload: str) -> JobRun:
    job = outcome.job
    if outcome.error is None:
        state = "completed"
    elif outcome.snoozed:
        state = "snoozed"
    elif outcome.permanent or job.attempts >= job.max_attempts:
        state = "permanently_failed"
    else:
        state = "failed"
    return JobRun(
        job,
        msgspec.json.decode(payload),
        state,
        error=outcome.error,
        traceback=outcome.traceback,
        duration_ms=outcome.duration_ms,
    )
