"""AsyncHandle: one coroutine submitted to an AsyncRunner, as the other threads see it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import JobTimeoutError

logger = logging.getLogger(__name__)

R = TypeVar("R")


class AsyncHandle(Generic[R]):
    """One coroutine submitted to an AsyncRunner: wait for it and ask how it ended.

    It settles only once the coroutine has really finished (its ``finally`` blocks
    included): with its result, its exception (``JobTimeoutError`` when it ran out of
    time) or as cancelled. Cancel it with ``AsyncRunner.cancel``.
    """

    def __init__(self, timeout: float | None, name: str | None) -> None:
        self.timeout = timeout
        self.name = name
        self._future: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._cancel_requested = False
        # Set and read on the loop thread only.
        self._task: asyncio.Task[R] | None = None

    def done(self) -> bool:
        """Whether the coroutine has finished, one way or another."""
        return self._future.done()

    def cancelled(self) -> bool:
        """Whether the coroutine ended by cancellation (``AsyncRunner.cancel`` or ``stop``)."""
        return self._future.cancelled()

    def timed_out(self) -> bool:
        """Whether the coroutine was cancelled because it ran longer than its timeout."""
        return (
            self._future.done()
            and not self._future.cancelled()
            and isinstance(self._future.exception(), JobTimeoutError)
        )

    def result(self, timeout: float | None = None) -> R:
        """Wait for the coroutine's result; raise its exception, ``JobTimeoutError``, or
        ``concurrent.futures.CancelledError`` if it was cancelled. ``timeout`` bounds the
        wait (``TimeoutError`` when it runs out; the coroutine keeps running)."""
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the coroutine and return its exception, or None if it succeeded."""
        return self._future.exception(timeout)

    def add_done_callback(self, fn: Callable[[AsyncHandle[R]], object]) -> None:
        """Call ``fn(handle)`` when the coroutine has finished (now, if it has).

        It runs on the loop thread, so it must be quick and must not block: hand the
        outcome to another thread (a queue ``put``) rather than doing I/O. Exceptions it
        raises are logged.
        """

        def call(_: concurrent.futures.Future[R]) -> None:
            try:
                fn(self)
            except Exception:
                logger.exception("done callback %r of %r failed", fn, self)

        self._future.add_done_callback(call)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else "pending"
        return f"<AsyncHandle {self.name or hex(id(self))} {state}>"
