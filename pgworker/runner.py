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
from .errors import PayloadError
from .hooks import Complete, Fail, Hooks, JobResult, Skip
from .inflight import InFlight
from .job import Job
from .outcome import Outcome
from .store import ClaimedJob
from .task import Task

logger = logging.getLogger(__name__)

#: How often an idle executor looks at the stop signal.
IDLE_CHECK = 0.2


class JobRunner:
    """Runs one claimed job: decode its payload, ask the plugins, call the task."""

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any, Any]],
        hooks: Hooks,
        make_context: Callable[[Job], JobContext],
    ) -> None:
        self.tasks = tasks
        self.hooks = hooks
        self.make_context = make_context

    def run(self, claimed: ClaimedJob) -> Outcome:
        """What running ``claimed`` came to; never raises."""
        started = time.perf_counter()
        try:
            return self._run(claimed, started)
        except BaseException as exc:  # never let a job take the thread down
            logger.exception("Unexpected error running job %d", claimed.job.id)
            return Outcome.failure(claimed.job, _ms_since(started), exc)

    def _run(self, claimed: ClaimedJob, started: float) -> Outcome:
        job, hooks = claimed.job, self.hooks
        task = self.tasks[job.task_identifier]
        try:
            payload = task.codec.decode(claimed.payload)
        except PayloadError as exc:
            # The payload will never decode, however often we retry: fail it for good.
            return Outcome.failure(job, _ms_since(started), exc, permanent=True)
        if hooks.intercepts_run:
            before = hooks.before_job_run(job, msgspec.json.decode(claimed.payload))
            if isinstance(before, Skip):
                return Outcome(job, _ms_since(started))
            if isinstance(before, Fail):
                return Outcome(job, _ms_since(started), before.message)
        hooks.job_started(job)
        raised: BaseException | None = None
        try:
            task.call(payload, self.make_context(job))
        except BaseException as exc:
            raised = exc
        duration = _ms_since(started)
        outcome = (
            Outcome(job, duration) if raised is None else Outcome.failure(job, duration, raised)
        )
        if hooks.inspects_result:
            after = hooks.after_job_run(job, JobResult(duration, outcome.error, raised))
            if isinstance(after, Complete):
                return Outcome(job, duration)
            if isinstance(after, Fail):
                return Outcome(job, duration, after.message)
        return outcome


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
        self.work: queue.SimpleQueue[ClaimedJob] = queue.SimpleQueue()

    def submit(self, claimed: ClaimedJob) -> None:
        """Queue a claimed job for the next free executor."""
        self.work.put(claimed)

    def run(self, stop: threading.Event) -> None:
        """One executor thread's loop: until ``stop`` is set and nothing is queued."""
        while True:
            try:
                claimed = self.work.get(timeout=IDLE_CHECK)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if not self.inflight.start(claimed.job.id):
                continue
            outcome = self.runner.run(claimed)
            self.inflight.finished(claimed.job.id)
            self.record(outcome)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
