"""Control: stopping a worker from signals, and running one in background threads."""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from .errors import PgWorkerError

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("pgworker.worker")


def install_stop_signals(worker: Worker) -> Callable[[], None] | None:
    """Make SIGINT and SIGTERM stop ``worker``: the first gracefully, a second at once.
    Returns the function that restores the previous handlers (None off the main thread,
    where Python cannot install handlers).

    The handler only queues the signal (``SimpleQueue.put`` is safe in a signal
    handler); a thread of its own stops the worker. Python runs handlers in the main
    thread, between two bytecodes of whatever it was doing: there, taking a lock that
    the interrupted code holds (the worker's, the log handler's) would hang for good."""
    if threading.current_thread() is not threading.main_thread():
        return None
    received: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def act() -> None:
        seen = 0
        while (signum := received.get()) is not None:
            seen += 1
            name = signal.Signals(signum).name
            if seen == 1:
                logger.info(
                    "%s: stopping; running jobs get %.0f s to finish (again to stop now)",
                    name,
                    worker.settings.shutdown_grace_period,
                )
                worker.request_stop()
            else:
                logger.warning("%s again: stopping now", name)
                worker.request_stop(force=True)

    thread = threading.Thread(target=act, name=f"{worker.worker_id}-signals", daemon=True)
    thread.start()
    restore = on_stop_signals(lambda signum, frame: received.put(signum))

    def restore_and_end() -> None:
        restore()
        received.put(None)
        thread.join(timeout=5.0)

    return restore_and_end


def on_stop_signals(handle: Callable[[int, FrameType | None], None]) -> Callable[[], None]:
    """Call ``handle`` on SIGINT and SIGTERM (from the main thread only); return the
    function that puts the previous handlers back."""
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore


class WorkerHandle:
    """A worker running in background threads (from ``App.start()``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"{worker.worker_id}-main", daemon=True
        )

    @classmethod
    def start(cls, worker: Worker) -> WorkerHandle:
        """Start ``worker.run()`` in a thread and return once it is fetching; an error
        while starting (no database, a bad schema revision) is raised here."""
        handle = cls(worker)
        handle._thread.start()
        while not worker._ready.wait(0.05):
            if not handle._thread.is_alive():
                handle._thread.join()
                raise handle.error or PgWorkerError("the worker stopped while starting")
        return handle

    def _run(self) -> None:
        try:
            self.worker.run(install_signal_handlers=False)
        except BaseException as exc:
            self.error = exc
            logger.exception("Worker %s crashed", self.worker.worker_id)

    @property
    def worker_id(self) -> str:
        """The lock-owner id of this worker (``locked_by`` of its jobs)."""
        return self.worker.worker_id

    def stop(self, timeout: float | None = None, *, force: bool = False) -> None:
        """Stop the worker and wait for it: running jobs finish, or after ``timeout``
        seconds (or at once with ``force``) are left to finish on their own; they stay
        locked by this worker until they return and their outcome is recorded."""
        self.worker.request_stop(force=force)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.worker.request_stop(force=True)
            self._thread.join()
        if self.error is not None:
            raise PgWorkerError(f"the worker crashed: {self.error}") from self.error

    def __enter__(self) -> WorkerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
