"""Eager mode: ``defer`` runs the task inline, with no database, for quick unit tests."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..context import JobContext
from ..errors import PgWorkerError
from ..job import Job
from ..spec import JobSpec
from ..store_fast import requested_job
from .records import DeferredJob

if TYPE_CHECKING:
    from ..app import App

#: The worker id an eagerly run job is "locked" by, as its context reports it.
EAGER_WORKER_ID = "pgworker-eager"
#: How many jobs one outermost ``defer`` may run, its follow-ups included: more means a
#: task that keeps deferring itself.
MAX_EAGER_JOBS = 1000


class EagerMode:
    """What ``App.eager()`` switches on: every job deferred through the app (``defer``,
    ``defer_many``, ``app.defer``, ``adefer``, ``defer_raw``) runs inline instead of
    being stored, and ``jobs`` records each one with its outcome.

    The payload goes through the task's type both ways (encoded as ``defer`` does, then
    decoded as a worker does), so a payload of the wrong type fails as it would. A job
    that a running task defers runs after that task returns (not in the middle of it), in
    the order deferred. The first failure raises out of the outermost ``defer`` with a
    note naming the job; the follow-ups not yet run are dropped.
    """

    def __init__(self, app: App, *, max_jobs: int = MAX_EAGER_JOBS) -> None:
        self.app = app
        self.max_jobs = max_jobs
        #: Every job deferred while eager, in order, with what became of it.
        self.jobs: list[DeferredJob] = []
        self._ids = itertools.count(1)
        self._pending: deque[tuple[int, str]] = deque()
        self._draining = False

    def run_deferred(self, identifier: str, payload: str, spec: JobSpec) -> Job:
        """Run one deferred job (``payload`` is its JSON text; ``spec`` merged with the
        task's defaults) and the jobs it defers; return the job as ``defer`` would."""
        job = requested_job(next(self._ids), datetime.now(UTC), identifier, spec)
        self.jobs.append(DeferredJob(job, msgspec.json.decode(payload), "waiting"))
        self._pending.append((len(self.jobs) - 1, payload))
        if self._draining:
            return job  # deferred by a running task: it runs once that task returns
        self._draining = True
        try:
            for ran in itertools.count(1):
                if not self._pending:
                    break
                if ran > self.max_jobs:
                    raise PgWorkerError(
                        f"eager mode ran {self.max_jobs} jobs for one defer() and more keep "
                        "coming: does a task defer itself every time? (last deferred: "
                        f"{self.jobs[-1].job.task_identifier!r})"
                    )
                self._run(*self._pending.popleft())
        finally:
            self._draining = False
            self._pending.clear()
        return job

    def _run(self, index: int, payload: str) -> None:
        record = self.jobs[index]
        task = self.app.tasks.get(record.job.task_identifier)
        if task is None:
            # A job for a worker elsewhere (a Node or Rust task): nothing here can run it.
            self.jobs[index] = msgspec.structs.replace(record, state="not_run")
            return
        now = datetime.now(UTC)
        running = msgspec.structs.replace(
            record.job, attempts=1, locked_at=now, locked_by=EAGER_WORKER_ID
        )
        try:
            decoded = task.codec.decode(payload)
            ctx = JobContext(running, self.app, EAGER_WORKER_ID) if task.takes_context else None
            if task.is_async:
                run_coroutine(task.call_async(decoded, ctx))
            else:
                task.call(decoded, ctx)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.jobs[index] = msgspec.structs.replace(record, state="failed", error=error)
            exc.add_note(
                f"(raised by job #{record.job.id} of task {record.job.task_identifier!r}, "
                "run inline by pgworker's eager mode)"
            )
            raise
        self.jobs[index] = msgspec.structs.replace(record, state="completed")


@contextmanager
def eager_mode(app: App, *, max_jobs: int = MAX_EAGER_JOBS) -> Iterator[EagerMode]:
    """Switch ``app`` to eager mode for the ``with`` block (what ``App.eager()`` does);
    inside one already, the same mode goes on."""
    current = app._eager_mode
    if current is not None:
        yield current
        return
    mode = EagerMode(app, max_jobs=max_jobs)
    app._eager_mode = mode
    try:
        yield mode
    finally:
        app._eager_mode = None


def run_coroutine(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` to the end from sync code: on a fresh event loop, or, when this
    thread already runs one (an async test), on a fresh loop in a helper thread."""

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_a_loop = False
    else:
        in_a_loop = True
    if not in_a_loop:
        return asyncio.run(wait())
    with ThreadPoolExecutor(1, thread_name_prefix="pgworker-testing") as pool:
        return pool.submit(asyncio.run, wait()).result()
