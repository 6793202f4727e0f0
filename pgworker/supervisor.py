"""Supervisor: ``pgworker run --processes N`` keeps N worker processes running.

Each child is a fresh ``pgworker run`` (without ``--processes``) started with
``subprocess``, not a ``multiprocessing`` child: it imports the app itself, so it
inherits no pool, thread, lock or open socket from the supervisor (as fork would) and
needs nothing pickled (as the spawn context would); it installs its own signal handlers
and writes its own log lines to the same stderr, exactly as a lone ``pgworker run``.

Children run in a process group of their own, so a Ctrl-C in a terminal reaches only
the supervisor, which forwards it once: the first SIGINT/SIGTERM stops every child
gracefully, a second one forcibly. On Linux a child also gets SIGTERM if the supervisor
dies without having stopped it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from .control import on_stop_signals

logger = logging.getLogger(__name__)

#: Restart backoff after a crash: BACKOFF_MIN seconds, doubling up to BACKOFF_MAX.
BACKOFF_MIN, BACKOFF_MAX = 0.25, 4.0
#: A child that ran this long before it exited starts a fresh backoff sequence.
STABLE_AFTER = 30.0
#: A child exiting with 0 (recycled) sooner than this is restarted after a short pause.
MIN_UPTIME = 1.0
#: How often the supervisor looks at its children.
POLL_INTERVAL = 0.1
#: Exit codes of a child that the supervisor's own forwarded signal killed before the
#: child could install its handlers: a stop, not a crash.
_STOPPED_BY_SIGNAL = (-signal.SIGTERM, -signal.SIGINT)
#: prctl(2)'s option that signals a child when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    """One slot of the supervisor: its current process, when it started, and how many
    times in a row it crashed."""

    slot: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    start_at: float = 0.0  # monotonic time of the next start, while it has no process
    exit_code: int | None = None
    signals_sent: int = 0  # stop signals forwarded to the current process


def restart_delay(failures: int) -> float:
    """Seconds before restarting a child that crashed ``failures`` times in a row:
    jittered, BACKOFF_MIN doubling up to BACKOFF_MAX (0 when it did not crash)."""
    if failures <= 0:
        return 0.0
    ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** (failures - 1))
    return ceiling * random.uniform(0.75, 1.0)


def describe_exit(code: int) -> str:
    """``code`` as a person reads it: "code 1" or "signal SIGKILL"."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function giving the child SIGTERM when the supervisor dies (Linux
    only; None elsewhere). libc is loaded here, before any fork."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return set_death_signal


class Supervisor:
    """Runs ``processes`` children, each ``command(start_number)`` (an argv), restarting
    a crashed one with backoff and a recycled one (exit code 0) at once, until a signal.
    ``run()`` returns the exit code for the supervisor's own process."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.command = command
        #: Environment variables the children get beside this process's own (secrets
        #: go here: a command line is readable by every user of the machine).
        self.env = dict(env or {})
        self.children = [Child(slot) for slot in range(processes)]
        self.starts = 0
        self.signals_seen = 0
        self._preexec = _parent_death_signal()

    # -- public -----------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Start the children and keep them running until a stop signal (or
        ``request_stop``), then wait for every one of them to exit. 0 when they all
        stopped cleanly, else 1."""
        restore = self._install_signals() if install_signal_handlers else None
        try:
            logger.info(
                "Supervisor %d: starting %d worker process(es)", os.getpid(), len(self.children)
            )
            while not self.signals_seen:
                now = time.monotonic()
                for child in self.children:
                    self._tend(child, now)
                time.sleep(POLL_INTERVAL)
            return self._wait_all()
        finally:
            self._kill_stragglers()
            if restore is not None:
                restore()

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop: forward ``signum`` to every child (the first time a graceful stop, the
        second a forced one); no child is started any more."""
        self.signals_seen += 1
        for child in self.children:
            self._forward(child, signum)

    def _forward(self, child: Child, signum: int) -> None:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signum)
            child.signals_sent += 1

    @property
    def pids(self) -> list[int]:
        """The pids of the children running now."""
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    # -- children ---------------------------------------------------------------------

    def _tend(self, child: Child, now: float) -> None:
        """Start a child whose turn has come; notice one that exited and schedule it."""
        proc = child.proc
        if proc is None:
            if now >= child.start_at:
                self._start(child)
            return
        code = proc.poll()
        if code is None:
            return
        child.proc = None
        lived = now - child.started_at
        if lived >= STABLE_AFTER:
            child.failures = 0
        if code == 0:
            # A clean exit is a recycle (a limit was reached), however soon it came: fast
            # jobs reach a job limit within a second. Only a pause guards against a child
            # that exits cleanly at once, again and again.
            logger.info(
                "Worker process %d (slot %d) stopped by itself (recycled); starting another",
                proc.pid,
                child.slot,
            )
            child.failures = 0
            child.start_at = now if lived >= MIN_UPTIME else now + restart_delay(1)
            return
        child.failures += 1
        delay = restart_delay(child.failures)
        child.start_at = now + delay
        logger.warning(
            "Worker process %d (slot %d) exited with %s after %.1f s; restarting in %.2f s",
            proc.pid,
            child.slot,
            describe_exit(code),
            lived,
            delay,
        )

    def _start(self, child: Child) -> None:
        self.starts += 1
        argv = list(self.command(self.starts))
        try:
            child.proc = subprocess.Popen(
                argv,
                env={**os.environ, **self.env} if self.env else None,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=self._preexec,
            )
        except OSError as exc:
            child.failures += 1
            child.start_at = time.monotonic() + restart_delay(child.failures)
            logger.error("Cannot start a worker process (slot %d): %s", child.slot, exc)
            return
        child.started_at = time.monotonic()
        child.signals_sent = 0
        logger.info("Started worker process %d (slot %d)", child.proc.pid, child.slot)

    def _wait_all(self) -> int:
        """Wait for every child to exit; 0 if each stopped cleanly."""
        clean = True
        for child in self.children:
            if child.proc is None:
                continue
            while (code := child.proc.poll()) is None:
                if child.signals_sent < self.signals_seen:  # started as the signal came
                    self._forward(child, signal.SIGTERM)
                time.sleep(POLL_INTERVAL)
            child.exit_code = code
            if code != 0 and code not in _STOPPED_BY_SIGNAL:
                clean = False
                logger.warning(
                    "Worker process %d (slot %d) exited with %s while stopping",
                    child.proc.pid,
                    child.slot,
                    describe_exit(code),
                )
        logger.info("Supervisor %d: every worker process has stopped", os.getpid())
        return 0 if clean else 1

    def _kill_stragglers(self) -> None:
        """On an unexpected exit of the supervisor (an exception), leave no child behind."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()

    def _install_signals(self) -> Callable[[], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.signals_seen == 0:
                logger.info("%s: stopping every worker process gracefully (again: now)", name)
            else:
                logger.warning("%s again: stopping every worker process now", name)
            self.request_stop(signum)

        return on_stop_signals(handle)
