"""Runner: the executor threads, and what running one claimed job comes to."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .context import JobContext
from .controls import JobControl
from .errors import PayloadError
from .hooks import Complete, Fail, Hooks, JobResult, Skip
from .inflight import InFlight
from .job import Job
from .outcome import INTERRUPTED_ERROR, Outcome, describe_error
from .retries import backoff_delay, control_outcome, returned_outcome
from .running import CANCEL_FLAG, RunningJob, cancel_reason
from .store import ClaimedJob
from .task import Task

logger = logging.getLogger(__name__)

#: How often an idle executor looks at the stop signal: a backstop only, as the shutdown
#: wakes idle executors at once (``Executors.wake_all``).
IDLE_CHECK = 0.5


class StartedJob(msgspec.Struct, frozen=True):
    """A job whose plugins let it run and were told it started: what is left is to call
    its task (``task.call`` in a thread, or ``task.call_async`` on the event loop). (A
    Struct: one is made per job, several times faster than a frozen dataclass.)"""

    job: Job
    task: Task[Any, Any, Any]
    payload: Any
    started: float
    running: RunningJob
    raw_payload: str  # as JSON text, for a batch job to keep its failed items


class JobRunner:
    """Runs one claimed job: decode its payload, ask the plugins, call the task.

    ``begin`` and ``end`` are the steps around the task call that sync and async jobs
    share; they call plugin hooks, which may block, so they never run on the event loop.
    """

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any, Any]],
        hooks: Hooks,
        make_context: Callable[[RunningJob], JobContext],
        *,
        default_timeout: float | None = None,
    ) -> None:
        self.tasks = tasks
        self.hooks = hooks
        self.make_context = make_context
        self.default_timeout = default_timeout

    def context_for(self, step: StartedJob) -> JobContext | None:
        """The context to hand the task: None for a task that takes none."""
        return self.make_context(step.running) if step.task.takes_context else None

    def timeout_for(self, job: Job) -> float | None:
        """The job's timeout: its task's own, else the app's default (None: none)."""
        task = self.tasks[job.task_identifier]
        return task.timeout if task.timeout is not None else self.default_timeout

    def run(self, claimed: ClaimedJob, running: RunningJob) -> Outcome:
        """What running ``claimed`` (a sync task's job) came to; never raises."""
        started = time.perf_counter()
        try:
            step = self.begin(claimed, started, running)
            if isinstance(step, Outcome):
                return step
            raised: BaseException | None = None
            returned: Any = None
            try:
                returned = step.task.call(step.payload, self.context_for(step))
            except BaseException as exc:
                raised = exc
            return self.end(step, raised, returned=returned)
        except BaseException as exc:  # never let a job take the thread down
            return self.unexpected(claimed.job, started, exc)

    def begin(
        self, claimed: ClaimedJob, started: float, running: RunningJob
    ) -> StartedJob | Outcome:
        """Decode the payload, ask ``before_job_run``, report ``on_job_started``: the job
        to call, or its outcome if it ends here (cancelled before it started, a payload
        that never decodes, a plugin that skips or fails it)."""
        job, hooks = claimed.job, self.hooks
        task = self.tasks[job.task_identifier]
        if job.flags and CANCEL_FLAG in job.flags:
            reason = cancel_reason(job.last_error)
            message = f"Cancelled: {reason}"
            return Outcome(job, ms_since(started), message, permanent=True)
        try:
            payload = task.codec.decode(claimed.payload)
        except PayloadError as exc:
            # The payload will never decode, however often we retry: fail it for good.
            # No traceback: the decode error says it all, and the frames are ours.
            return Outcome(job, ms_since(started), describe_error(exc), permanent=True)
        if hooks.intercepts_run:
            before = hooks.before_job_run(job, msgspec.json.decode(claimed.payload))
            if isinstance(before, Skip):
                return Outcome(job, ms_since(started))
            if isinstance(before, Fail):
                return self.with_backoff(Outcome(job, ms_since(started), before.message))
        if hooks.listens("on_job_started"):
            hooks.job_started(job)
        return StartedJob(job, task, payload, started, running, claimed.payload)

    def end(
        self,
        step: StartedJob,
        raised: BaseException | None,
        *,
        returned: Any = None,
        interrupted: bool = False,
    ) -> Outcome:
        """The outcome of a called task: how it ended (``raised``, else ``returned``), as
        ``after_job_run`` sees it. An ``interrupted`` job (cancelled by a shutdown) is
        given back whatever the plugins say; a cancelled or timed-out one stays so
        whatever control it raised."""
        job, hooks, running = step.job, self.hooks, step.running
        duration = ms_since(step.started)
        if interrupted:
            outcome = Outcome(job, duration, INTERRUPTED_ERROR, interrupted=True)
        elif raised is None:
            outcome = returned_outcome(job, duration, returned, step.raw_payload)
        elif running.cancel_reason is not None:
            # Cancelled: never retried, whatever attempts are left.
            message = f"Cancelled: {running.cancel_reason}"
            outcome = Outcome(job, duration, message, permanent=True)
        elif running.timed_out:
            message = f"Timed out after {running.timeout:g} s ({describe_error(raised)})"
            outcome = Outcome(job, duration, message)
        elif isinstance(raised, JobControl):
            outcome = control_outcome(job, duration, raised)
        else:
            outcome = Outcome.failure(job, duration, raised)
        if hooks.inspects_result:
            error = None if outcome.snoozed else outcome.error
            after = hooks.after_job_run(job, JobResult(duration, error, raised))
            if interrupted:
                return outcome
            if isinstance(after, Complete):
                return Outcome(job, duration)
            if isinstance(after, Fail):
                outcome = Outcome(job, duration, after.message)
        return self.with_backoff(outcome)

    def with_backoff(self, outcome: Outcome) -> Outcome:
        """A failure with the wait its task's own backoff gives, if it has one and
        nothing chose the next attempt's time already."""
        if not outcome.is_failure or outcome.permanent or outcome.has_retry_time:
            return outcome
        job = outcome.job
        task = self.tasks.get(job.task_identifier)
        if task is None or task.backoff is None:
            return outcome
        delay = backoff_delay(job.task_identifier, task.backoff, job.attempts)
        return outcome if delay is None else msgspec.structs.replace(outcome, retry_delay=delay)

    def unexpected(self, job: Job, started: float, exc: BaseException) -> Outcome:
        """The outcome of a job whose running failed in pgworker (or a plugin) itself."""
        logger.exception("Unexpected error running job %d", job.id)
        return Outcome.failure(job, ms_since(started), exc)


class Executors:
    """``count`` threads that take claimed jobs from a queue, run them, and hand each
    outcome to ``record``. A job that a stop gave back before it started is skipped."""

    def __init__(
        self,
        runner: JobRunner,
        inflight: InFlight,
        record: Callable[[Outcome], None],
    ) -> None:
        self.runner = runner
        self.inflight = inflight
        self.record = record
        # None: a marker that wakes one executor to look at the stop signal.
        self.work: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()

    def submit(self, claimed: ClaimedJob) -> None:
        """Queue a claimed job for the next free executor."""
        self.work.put(claimed)

    def wake_all(self, threads: int) -> None:
        """Wake ``threads`` executors to look at the stop signal now: one marker each,
        queued behind every job, so each exits once the queue is empty (the caller makes
        sure nothing is submitted any more)."""
        for _ in range(threads):
            self.work.put(None)

    def run(self, stop: threading.Event) -> None:
        """One executor thread's loop: until ``stop`` is set and nothing is queued."""
        while True:
            try:
                claimed = self.work.get(timeout=IDLE_CHECK)
            except queue.Empty:
                claimed = None
            if claimed is None:
                if stop.is_set():
                    return
                continue
            running = self.inflight.start(claimed, self.runner.timeout_for(claimed.job))
            if running is None:
                continue
            outcome = self.runner.run(claimed, running)
            # The outcome first: a claim that the freed slot starts then completes it.
            self.record(outcome)
            self.inflight.finished(claimed.job.id)


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
