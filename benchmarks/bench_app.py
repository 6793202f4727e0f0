"""The app the benchmark's pgworker processes run (``pgworker run benchmarks.bench_app:app``).

- ``noop`` does nothing: the throughput phase measures the queue, not the task.
- ``latency`` appends ``"<n> <CLOCK_MONOTONIC ns>"`` to the file named by
  ``PGWORKER_BENCH_LATENCY_FILE`` the moment it starts, exactly as the Node side's
  ``latency`` task does (``process.hrtime.bigint()`` reads the same clock).
"""

from __future__ import annotations

import os
import time
from typing import Any

from pgworker import App

LATENCY_FILE_VARIABLE = "PGWORKER_BENCH_LATENCY_FILE"

app = App()


@app.task("noop")
def noop(payload: Any) -> None:
    """Do nothing."""


@app.task("latency")
def latency(payload: dict[str, Any]) -> None:
    """Record when this job started."""
    now = time.monotonic_ns()
    path = os.environ.get(LATENCY_FILE_VARIABLE)
    if path:
        with open(path, "a", encoding="ascii") as file:
            file.write(f"{payload['n']} {now}\n")
