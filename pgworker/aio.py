"""AsyncRunner: one event loop, in one daemon thread, that runs a worker's ``async def`` tasks."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from .aio_handle import AsyncHandle
from .errors import ConfigurationError, JobTimeoutError, PgWorkerError

logger = logging.getLogger(__name__)

__all__ = ["AsyncHandle", "AsyncRunner"]

R = TypeVar("R")

#: How long coroutines cancelled by a timed-out ``stop`` get to unwind, and then how long
#: the loop thread gets to exit, before ``stop`` gives up on them.
CANCEL_GRACE = 1.0


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class AsyncRunner:
    """Runs coroutines on one event loop in one daemon thread, at most ``limit`` at a time.

    A coroutine waiting on I/O holds no thread, only one of the ``limit`` slots. Slots are
    reserved before work is taken on, so a worker claims only as many async jobs as it
    can start at once::

        runner = AsyncRunner(limit=100)
        runner.start()
        n = runner.try_acquire(10)        # reserve up to 10 slots
        ...claim up to n jobs, submit each (one slot each), release(n - submitted)
        handle = runner.submit(lambda: send_email(payload), timeout=30)
        handle.add_done_callback(report)  # runs on the loop thread: keep it short
        runner.stop(timeout=10)           # wait for running coroutines, then join

    Errors inside the loop thread are logged and never end it.
    """

    def __init__(self, *, limit: int = 100, name: str = "pgworker-async") -> None:
        if limit < 1:
            raise ConfigurationError(f"the async concurrency limit must be at least 1, not {limit}")
        self.limit = limit
        self.name = name
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._reserved = 0
        self._handles: set[AsyncHandle[Any]] = set()
        self._idle = threading.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = False

    # Lifecycle

    def start(self) -> None:
        """Start the loop thread. A runner starts once."""
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError(f"{self!r} was already started; build a new AsyncRunner")
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(self._log_loop_error)
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._state = _State.RUNNING
        self._thread.start()

    def stop(self, timeout: float | None = None, *, cancel: bool = False) -> bool:
        """Stop taking work, wait for the running coroutines, stop the loop and join its thread.

        Nothing is cancelled unless ``cancel`` is true, or the coroutines are still running
        after ``timeout`` seconds (None waits for them however long they take): then they
        are cancelled and get CANCEL_GRACE seconds to unwind. The handles of any that
        ignore cancellation fail with PgWorkerError. Returns True if every coroutine ended
        before the timeout and the thread was joined; calling it again does nothing more.
        Not from the loop thread (a coroutine or a done callback): it would wait on itself.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("AsyncRunner.stop() was called on its own loop thread")
        with self._lock:
            if self._state is _State.NEW:
                self._state = _State.STOPPED
                return True
            thread = self._thread
            assert thread is not None
            if self._state is not _State.RUNNING:
                stopping_elsewhere = True
            else:
                stopping_elsewhere = False
                self._state = _State.STOPPING
        if stopping_elsewhere:
            thread.join(timeout)
            return not thread.is_alive()
        if cancel:
            self.cancel_all()
        clean = self._idle.wait(timeout)
        if not clean:
            cancelled = self.cancel_all()
            logger.warning(
                "%d async coroutine(s) still running %g s after stop; cancelled them",
                cancelled,
                timeout,
            )
            self._idle.wait(CANCEL_GRACE)
        loop = self._loop
        assert loop is not None
        self._stop_requested = True
        loop.call_soon_threadsafe(loop.stop)
        # The thread still finalizes async generators for up to CANCEL_GRACE.
        thread.join(None if timeout is None else 2 * CANCEL_GRACE)
        if thread.is_alive():
            logger.error(
                "the async loop thread did not exit: a coroutine is blocking it "
                "(synchronous I/O or CPU work inside an async def task?)"
            )
            return False
        return clean

    def __enter__(self) -> AsyncRunner:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Slots

    @property
    def running(self) -> int:
        """Coroutines submitted and not yet finished."""
        return len(self._handles)

    @property
    def free_slots(self) -> int:
        """Slots neither reserved nor running a coroutine (0 unless the runner is running)."""
        with self._lock:
            if self._state is not _State.RUNNING:
                return 0
            return max(0, self.limit - self._reserved - len(self._handles))

    def try_acquire(self, n: int = 1) -> int:
        """Reserve up to ``n`` free slots and return how many were reserved (maybe 0).

        Each ``submit`` uses one reserved slot; give back the ones left unused with
        ``release``. Nothing is reserved once the runner is stopping.
        """
        if n < 0:
            raise ValueError(f"cannot acquire {n} slots")
        with self._lock:
            if self._state is not _State.RUNNING:
                return 0
            got = max(0, min(n, self.limit - self._reserved - len(self._handles)))
            self._reserved += got
            return got

    def release(self, n: int = 1) -> None:
        """Give back ``n`` reserved slots that will not be submitted to."""
        with self._lock:
            if not 0 <= n <= self._reserved:
                raise ValueError(f"cannot release {n} slots: {self._reserved} are reserved")
            self._reserved -= n

    # Work

    def submit(
        self,
        make_coro: Callable[[], Awaitable[R]],
        *,
        timeout: float | None = None,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> AsyncHandle[R]:
        """Run ``make_coro()`` on the loop in a slot reserved with ``try_acquire``.

        ``make_coro`` is called on the loop thread, so the coroutine is created where it
        runs. After ``timeout`` seconds (counted from its start) it is cancelled and its
        handle fails with JobTimeoutError. ``name`` labels the asyncio task and the logs.
        With ``context`` (``contextvars.copy_context()`` of the submitting thread), the
        coroutine runs in it, seeing the context variables set there (a tracing span).
        The slot is freed when the coroutine has finished.
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, not {timeout}")
        handle: AsyncHandle[R] = AsyncHandle(timeout, name)
        with self._lock:
            if self._state is not _State.RUNNING:
                raise RuntimeError(f"{self!r} is not running; cannot submit {name or make_coro!r}")
            if self._reserved < 1:
                raise RuntimeError("submit needs a slot reserved first with try_acquire()")
            loop = self._loop
            assert loop is not None
            self._reserved -= 1
            self._handles.add(handle)
            self._idle.clear()
            loop.call_soon_threadsafe(self._start, handle, make_coro, context)
        return handle

    def cancel(self, handle: AsyncHandle[Any]) -> bool:
        """Cancel one coroutine (``Task.cancel`` on the loop thread). Returns False if it had
        already finished. The handle settles once the coroutine has unwound: as cancelled,
        or however the coroutine ended if it caught the cancellation."""
        with self._lock:
            if handle not in self._handles:
                return False
            handle._cancel_requested = True
            loop = self._loop
            assert loop is not None
            loop.call_soon_threadsafe(self._cancel_on_loop, handle)
            return True

    def cancel_all(self) -> int:
        """Cancel every running coroutine; return how many were asked to stop."""
        with self._lock:
            handles = list(self._handles)
        return sum(self.cancel(handle) for handle in handles)

    # On the loop thread

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            while True:
                try:
                    loop.run_forever()
                except BaseException:
                    logger.exception("the async event loop raised; it keeps running")
                    continue
                if self._stop_requested:
                    break
                logger.warning("a coroutine stopped the async event loop; it keeps running")
        finally:
            self._close(loop)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._state = _State.STOPPED
            leftovers = list(self._handles)
        for handle in leftovers:
            self._settle(
                handle,
                exc=PgWorkerError(
                    "the async runner stopped before this coroutine finished "
                    "(it did not end when cancelled)"
                ),
            )
            task = handle._task
            if task is not None:
                try:
                    task.get_coro().close()
                except BaseException:
                    logger.exception("closing the abandoned coroutine of %r failed", handle)
        try:
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), CANCEL_GRACE))
        except BaseException:
            logger.exception("finalizing async generators at stop failed")
        finally:
            loop.close()

    def _start(
        self,
        handle: AsyncHandle[R],
        make_coro: Callable[[], Awaitable[R]],
        context: contextvars.Context | None,
    ) -> None:
        try:
            if handle._cancel_requested:
                self._settle(handle, cancelled=True)
                return
            try:
                awaitable = make_coro() if context is None else context.run(make_coro)
                if not inspect.isawaitable(awaitable):
                    raise TypeError(
                        f"{make_coro!r} returned {type(awaitable).__name__}, not an awaitable"
                    )
            except BaseException as exc:  # SystemExit too: it would leave the handle pending
                self._settle(handle, exc=exc)
                return
            loop = asyncio.get_running_loop()
            task = loop.create_task(
                _run_guarded(awaitable, handle.timeout), name=handle.name, context=context
            )
            handle._task = task
            task.add_done_callback(functools.partial(self._task_done, handle))
        except Exception as exc:
            logger.exception("starting %r failed", handle)
            self._settle(handle, exc=exc)

    def _cancel_on_loop(self, handle: AsyncHandle[Any]) -> None:
        if handle._task is not None:
            handle._task.cancel()
        # Not started yet: _start sees _cancel_requested and never creates the coroutine.

    def _task_done(self, handle: AsyncHandle[R], task: asyncio.Task[R]) -> None:
        try:
            if task.cancelled():
                self._settle(handle, cancelled=True)
            elif (exc := task.exception()) is not None:
                self._settle(handle, exc=exc)
            else:
                self._settle(handle, result=task.result())
        except Exception as exc:
            logger.exception("settling %r failed", handle)
            self._settle(handle, exc=exc)

    def _settle(
        self,
        handle: AsyncHandle[Any],
        *,
        result: Any = None,
        exc: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        """Free the handle's slot, then resolve its future (so a woken waiter sees the slot
        free). Settling twice does nothing."""
        with self._lock:
            if handle not in self._handles:
                return
            self._handles.discard(handle)
            if not self._handles:
                self._idle.set()
        future = handle._future
        if cancelled:
            future.cancel()
        if future.set_running_or_notify_cancel():
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _log_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        logger.error(
            "async runner: %s",
            context.get("message", "unhandled error in the event loop"),
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    def __repr__(self) -> str:
        return (
            f"<AsyncRunner {self.name!r} {self._state.value} "
            f"running={len(self._handles)}/{self.limit} reserved={self._reserved}>"
        )


async def _run_guarded(awaitable: Awaitable[R], timeout: float | None) -> R:
    """Await ``awaitable`` within ``timeout``; keep the exceptions that would end the loop
    (asyncio re-raises KeyboardInterrupt and SystemExit out of ``run_forever``) inside."""
    try:
        async with asyncio.timeout(timeout) as scope:
            return await awaitable
    except TimeoutError:
        if timeout is not None and scope.expired():
            raise JobTimeoutError(timeout) from None
        raise
    except (KeyboardInterrupt, SystemExit) as exc:
        raise PgWorkerError(
            f"the coroutine raised {exc!r}; a task cannot stop the worker this way"
        ) from exc
