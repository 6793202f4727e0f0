"""RunningJob: a job whose code is running, its deadline, and requests to stop it early."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .job import Job

#: The job flag that asks the worker running a job to cancel it (set by admin.cancel).
CANCEL_FLAG = "pgworker_cancel"
#: How a cancel request starts the job's last_error (the reason follows).
CANCEL_REQUESTED = "Cancel requested: "


def cancel_reason(last_error: str | None) -> str:
    """The reason given with a cancel request, read back from the job's last_error."""
    if last_error and last_error.startswith(CANCEL_REQUESTED):
        return last_error[len(CANCEL_REQUESTED) :]
    return "no reason given"


class RunningJob:
    """What the watch thread and the job's own code share while the job runs.

    A deadline that passes (``expire``) or a cancel request (``cancel``) sets
    ``stopping``; a sync task sees it through ``ctx`` (``ctx.cancelled``, ``ctx.check()``,
    ``ctx.wait()``); an async task is cancelled for real (``on_stop``, set by the async
    lane). The event behind ``wait`` is made only for a task that waits: most never do.
    """

    def __init__(self, job: Job, timeout: float | None) -> None:
        self.job = job
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self.stopping = False
        self._wakeup: threading.Event | None = None
        self.timed_out = False
        self.cancel_reason: str | None = None
        self.overran = False  # past its deadline by the hard limit: reported once
        self.on_stop: Callable[[], object] | None = None

    def expire(self) -> None:
        """The deadline passed: ask the job to stop."""
        if not self.stopping:
            self.timed_out = True
            self._request_stop()

    def cancel(self, reason: str) -> None:
        """Someone cancelled the job: ask it to stop."""
        if not self.stopping:
            self.cancel_reason = reason
            self._request_stop()

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (negative once past), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - (time.monotonic() if now is None else now)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking when the job is asked to stop; True if it is.
        (Called by the job's own thread only.)"""
        if self._wakeup is None:
            self._wakeup = threading.Event()
        # Checked after the event exists: a stop requested before it was made is seen
        # here, one requested after sets it.
        if self.stopping:
            return True
        return self._wakeup.wait(seconds)

    def _request_stop(self) -> None:
        self.stopping = True
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()
        if self.on_stop is not None:
            self.on_stop()
