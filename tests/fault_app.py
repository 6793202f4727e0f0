"""A small App for the fault-injection tests, run as ``pgworker run fault_app:app``.

Test code: the settings come from environment variables read at import time; the
database and schema come from the CLI's ``--database-url`` and ``--schema``.

- ``FAULT_MARKER_DIR``: where tasks drop marker files (``<job id>-<attempt>-<event>``,
  holding the worker id), so a test can see a job start and finish from outside.
- ``FAULT_GRACE``: ``shutdown_grace_period`` (default 30 s).
- ``FAULT_RETRY_DELAY``: ``interrupted_retry_delay`` (default 30 s).
- ``FAULT_CONCURRENCY``: ``concurrency`` (default 4).
- ``FAULT_RECOVERY``: ``heartbeat,stale_after,sweep`` seconds for ``Recovery`` (default:
  pgworker's defaults).
- ``FAULT_HARD_TIMEOUT``: ``hard_timeout`` (default 30 s).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec

from pgworker import App, JobContext, Recovery

MARKER_DIR = Path(os.environ.get("FAULT_MARKER_DIR") or ".")
#: One line per marker written, in MARKER_DIR: ``<marker> <worker id> <unix time>``.
EVENTS_LOG = "events.log"


def _recovery() -> Recovery:
    setting = os.environ.get("FAULT_RECOVERY")
    if not setting:
        return Recovery()
    heartbeat, stale_after, sweep = (float(part) for part in setting.split(","))
    return Recovery(heartbeat_interval=heartbeat, stale_after=stale_after, sweep_interval=sweep)


app = App(
    recovery=_recovery(),
    hard_timeout=float(os.environ.get("FAULT_HARD_TIMEOUT", "30")),
    concurrency=int(os.environ.get("FAULT_CONCURRENCY", "4")),
    shutdown_grace_period=float(os.environ.get("FAULT_GRACE", "30")),
    interrupted_retry_delay=float(os.environ.get("FAULT_RETRY_DELAY", "30")),
)


class Nap(msgspec.Struct):
    """Sleep ``seconds`` on the first run and ``retry_seconds`` (if given) on any later
    one: a retry, or a run after the job was recovered (attempt refunded, last_error set)."""

    seconds: float
    retry_seconds: float | None = None


def mark(ctx: JobContext, event: str) -> None:
    """Drop ``<job id>-<attempt>-<event>`` holding the worker id (written, then renamed,
    so a reader never sees a half-written file), and log it in EVENTS_LOG."""
    name = f"{ctx.job.id}-{ctx.job.attempts}-{event}"
    partial = MARKER_DIR / f".{name}.tmp"
    partial.write_text(ctx.worker_id)
    partial.rename(MARKER_DIR / name)
    # Markers of a rerun overwrite the first run's: this log keeps every event.
    with (MARKER_DIR / EVENTS_LOG).open("a") as events:
        events.write(f"{name} {ctx.worker_id} {time.time():.3f}\n")


@app.task("sleepy")
def sleepy(nap: Nap, ctx: JobContext) -> None:
    mark(ctx, "started")
    seconds = nap.seconds
    rerun = ctx.job.attempts > 1 or ctx.job.last_error is not None
    if rerun and nap.retry_seconds is not None:
        seconds = nap.retry_seconds
    time.sleep(seconds)
    mark(ctx, "done")


@app.task("quick")
def quick(payload: dict[str, Any], ctx: JobContext) -> None:
    mark(ctx, "done")


@app.task("doomed")
def doomed(payload: dict[str, Any], ctx: JobContext) -> None:
    """Kill the worker process running it, every time (out of memory, say)."""
    mark(ctx, "started")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task("stubborn", timeout=1.0)
def stubborn(nap: Nap, ctx: JobContext) -> None:
    """Like sleepy, with a 1 s timeout that it ignores."""
    sleepy(nap, ctx)
