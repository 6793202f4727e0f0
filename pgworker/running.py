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

    A deadline that passes (``expire``) or a cancel request (``cancel``) sets ``stop``;
    a sync task sees it through ``ctx`` (``ctx.cancelled``, ``ctx.check()``); an async
    task is cancelled for real (``on_stop``, set by the async lane).
    """

    def __init__(self, job: Job, timeout: float | None) -> None:
        self.job = job
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self.stop = threading.Event()
        self.timed_out = False
        self.cancel_reason: str | None = None
        self.overran = False  # past its deadline by the hard limit: reported once
        self.on_stop: Callable[[], object] | None = None

    def expire(self) -> None:
        """The deadline passed: ask the job to stop."""
        if not self.stop.is_set():
            self.timed_out = True
            self._request_stop()

    def cancel(self, reason: str) -> None:
        """Someone cancelled the job: ask it to stop."""
        if not self.stop.is_set():
            self.cancel_reason = reason
            self._request_stop()

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (negative once past), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - (time.monotonic() if now is None else now)

    def _request_stop(self) -> None:
        self.stop.set()
        if self.on_stop is not None:
            self.on_stop()
