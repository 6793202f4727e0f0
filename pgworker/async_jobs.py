"""AsyncJobs: runs the claimed jobs of ``async def`` tasks on the worker's event loop."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .aio import AsyncHandle, AsyncRunner
from .inflight import InFlight
from .outcome import Outcome
from .runner import JobRunner, StartedJob
from .store import ClaimedJob

logger = logging.getLogger(__name__)

#: How often an idle steps thread looks at the stop signal.
IDLE_CHECK = 0.05
#: How long stopping the event loop may take once no job of ours runs on it.
LOOP_STOP_TIMEOUT = 5.0


class AsyncJobs:
    """The async lane of a worker: one event loop (an ``AsyncRunner`` with ``limit``
    slots) and one thread, ``steps``, for what must not run on the loop.

    The fetcher reserves loop slots (``reserve``), claims that many jobs at most, and
    hands each to ``submit``. The steps thread then does what an executor does before
    and after a sync task (``JobRunner.begin`` and ``end``: payload decoding and plugin
    hooks, which may block) and starts the task's coroutine on the loop, where it holds
    no thread while it awaits. Its outcome goes to ``record`` as a sync job's does.

    ``cancel_running`` (a shutdown that stops waiting) cancels the coroutines; each job
    stays locked by this worker until its coroutine has unwound, and is then given back
    with its attempt refunded. A coroutine that ignores the cancellation keeps its job
    until it returns.
    """

    def __init__(
        self,
        runner: JobRunner,
        inflight: InFlight,
        record: Callable[[Outcome], None],
        *,
        limit: int,
        name: str,
    ) -> None:
        self.runner = runner
        self.inflight = inflight
        self.record = record
        self.loop = AsyncRunner(limit=limit, name=f"{name}-async-loop")
        # Jobs to start, and coroutines that ended (put there by the loop thread).
        self.steps: queue.SimpleQueue[ClaimedJob | _Ended] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # handed to submit and not yet done with
        self._handles: dict[int, AsyncHandle[Any]] = {}
        self._cancelled: set[int] = set()
        self._cancelling_all = False  # a forced stop cancelled every coroutine

    # -- the fetcher's side -------------------------------------------------------------

    def start(self) -> None:
        """Start the event loop's thread."""
        self.loop.start()

    def free_slots(self) -> int:
        """Event-loop slots free for more jobs now."""
        return self.loop.free_slots

    def reserve(self, n: int) -> int:
        """Reserve up to ``n`` slots for jobs about to be claimed; return how many."""
        return self.loop.try_acquire(n)

    def release(self, n: int) -> None:
        """Give back ``n`` reserved slots that no claimed job took."""
        if n:
            self.loop.release(n)
            self.inflight.slot_freed()

    def submit(self, claimed: ClaimedJob) -> None:
        """Run a claimed job (recorded as waiting in InFlight) in one reserved slot."""
        with self._lock:
            self._pending += 1
        self.steps.put(claimed)

    # -- the steps thread ---------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """The steps thread's loop: until ``stop`` is set and no job of ours is left."""
        while True:
            try:
                item = self.steps.get(timeout=IDLE_CHECK)
            except queue.Empty:
                if stop.is_set() and self.idle:
                    return
                continue
            try:
                if isinstance(item, _Ended):
                    self._end(item.step, item.handle)
                else:
                    self._begin(item)
            except Exception:  # the thread must outlive any one job
                logger.exception("The async jobs' steps thread failed on %r", item)

    @property
    def idle(self) -> bool:
        """Whether every job handed in is done with (its outcome handed to ``record``)."""
        with self._lock:
            return self._pending == 0

    def _begin(self, claimed: ClaimedJob) -> None:
        job = claimed.job
        running = self.inflight.start(claimed, self.runner.timeout_for(job))
        if running is None:  # a stop gave it back before it started
            self.release(1)
            self._done_with()
            return
        started = time.perf_counter()
        try:
            step = self.runner.begin(claimed, started, running)
        except BaseException as exc:
            step = self.runner.unexpected(job, started, exc)
        if isinstance(step, Outcome):  # ended before its task was called
            self.release(1)
            self._settle(job.id, step)
            return
        # The context the plugins set up in on_job_started (a tracing span) is the one
        # the coroutine runs in.
        context = contextvars.copy_context()
        runner = self.runner
        try:
            handle = self.loop.submit(
                lambda: step.task.call_async(step.payload, runner.context_for(step)),
                name=f"{job.task_identifier}#{job.id}",
                context=context,
            )
        except BaseException as exc:
            self.release(1)
            self._settle(job.id, runner.end(step, exc))
            return
        with self._lock:
            self._handles[job.id] = handle
            # A forced stop that looked at the handles before this one was recorded
            # still cancels it.
            cancel_now = self._cancelling_all
            if cancel_now:
                self._cancelled.add(job.id)
        handle.add_done_callback(lambda h: self.steps.put(_Ended(step, h)))
        if cancel_now:
            self.loop.cancel(handle)
        # A deadline or a cancel request cancels the coroutine for real (one that came
        # before this line is honoured here).
        running.on_stop = lambda: self.loop.cancel(handle)
        if running.stopping:
            self.loop.cancel(handle)

    def _end(self, step: StartedJob, handle: AsyncHandle[Any]) -> None:
        job_id = step.job.id
        with self._lock:
            self._handles.pop(job_id, None)
            interrupted = job_id in self._cancelled
            self._cancelled.discard(job_id)
        raised: BaseException | None
        returned: Any = None
        if handle.cancelled():
            raised = asyncio.CancelledError("the coroutine was cancelled")
        else:
            raised = handle.exception()
            if raised is None:
                returned = handle.result()
        interrupted = interrupted and handle.cancelled()
        try:
            outcome = self.runner.end(step, raised, returned=returned, interrupted=interrupted)
        except BaseException as exc:
            outcome = self.runner.unexpected(step.job, step.started, exc)
        self._settle(job_id, outcome)

    def _settle(self, job_id: int, outcome: Outcome) -> None:
        # The outcome first: a claim that the freed slot starts then completes it.
        self.record(outcome)
        self.inflight.finished(job_id)
        self._done_with()

    def _done_with(self) -> None:
        with self._lock:
            self._pending -= 1

    # -- shutdown -----------------------------------------------------------------------

    def cancel_running(self) -> list[int]:
        """Cancel every running coroutine; return their job ids. Each job is given back
        once its coroutine has unwound (if it ends by the cancellation)."""
        with self._lock:
            self._cancelling_all = True
            handles = dict(self._handles)
            self._cancelled.update(handles)
        cancelled = [job_id for job_id, handle in handles.items() if self.loop.cancel(handle)]
        if cancelled:
            logger.warning(
                "Cancelled %d running async job(s) (%s): each goes back to the queue once "
                "its coroutine has unwound",
                len(cancelled),
                ", ".join(f"#{i}" for i in cancelled),
            )
        return cancelled

    def stop(self) -> None:
        """Stop the event loop (once no job of ours runs on it) and join its thread."""
        self.loop.stop(LOOP_STOP_TIMEOUT, cancel=True)


class _Ended:
    """A coroutine that ended: for the steps thread to turn into an outcome."""

    __slots__ = ("handle", "step")

    def __init__(self, step: StartedJob, handle: AsyncHandle[Any]) -> None:
        self.step = step
        self.handle = handle

    def __repr__(self) -> str:
        return f"<ended job {self.step.job.id}>"
