"""A small App for the fault-injection tests, run as ``pgworker run fault_app:app``.

Test code: the settings come from environment variables read at import time; the
database and schema come from the CLI's ``--database-url`` and ``--schema``.

- ``FAULT_MARKER_DIR``: where tasks drop marker files (``<job id>-<attempt>-<event>``,
  holding the worker id), so a test can see a job start and finish from outside.
- ``FAULT_GRACE``: ``shutdown_grace_period`` (default 30 s).
- ``FAULT_RETRY_DELAY``: ``interrupted_retry_delay`` (default 30 s).
- ``FAULT_CONCURRENCY``: ``concurrency`` (default 4).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgspec

from pgworker import App, JobContext

MARKER_DIR = Path(os.environ.get("FAULT_MARKER_DIR") or ".")

app = App(
    concurrency=int(os.environ.get("FAULT_CONCURRENCY", "4")),
    shutdown_grace_period=float(os.environ.get("FAULT_GRACE", "30")),
    interrupted_retry_delay=float(os.environ.get("FAULT_RETRY_DELAY", "30")),
)


class Nap(msgspec.Struct):
    """Sleep ``seconds`` on the first attempt and ``retry_seconds`` (if given) after."""

    seconds: float
    retry_seconds: float | None = None


def mark(ctx: JobContext, event: str) -> None:
    """Drop ``<job id>-<attempt>-<event>`` holding the worker id (written, then renamed,
    so a reader never sees a half-written file)."""
    name = f"{ctx.job.id}-{ctx.job.attempts}-{event}"
    partial = MARKER_DIR / f".{name}.tmp"
    partial.write_text(ctx.worker_id)
    partial.rename(MARKER_DIR / name)


@app.task("sleepy")
def sleepy(nap: Nap, ctx: JobContext) -> None:
    mark(ctx, "started")
    seconds = nap.seconds
    if ctx.job.attempts > 1 and nap.retry_seconds is not None:
        seconds = nap.retry_seconds
    time.sleep(seconds)
    mark(ctx, "done")


@app.task("quick")
def quick(payload: dict[str, Any], ctx: JobContext) -> None:
    mark(ctx, "done")
