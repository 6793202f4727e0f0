"""What the benchmark's modules share: constants, options, errors, progress lines."""

from __future__ import annotations

import compileall
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"
RESULTS_DIR = ROOT / ".bench"
APP_TARGET = "benchmarks.bench_app:app"
SIDES = ("pgworker", "node")
#: default: both sides' defaults; batched: the local-queue configuration.
MODES = ("default", "batched")
NODE_VERSION_PINNED = "0.17.3"

#: Bounds on everything that waits, so that the benchmark always ends.
CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT_MS = 120_000
STOP_TIMEOUT = 20.0
EXIT_TIMEOUT = 60.0
WORKER_READY_TIMEOUT = 60.0
LATENCY_WAIT_TIMEOUT = 30.0
NPM_TIMEOUT = 300.0
PROGRESS_EVERY = 2.0


class BenchError(RuntimeError):
    """The benchmark could not measure something; the message says what."""


def compile_sources() -> None:
    """Write the bytecode of pgworker and the benchmark's app, as installing a wheel
    does: a checkout run with PYTHONDONTWRITEBYTECODE=1 (or from a read-only tree) would
    otherwise compile every module again at each worker's start (~50-100 ms here)."""
    for directory in (ROOT / "pgworker", ROOT / "benchmarks"):
        compileall.compile_dir(directory, quiet=1)


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    jobs: int
    batch_size: int
    processes: int
    concurrency: int
    repeat: int
    sides: tuple[str, ...]
    modes: tuple[str, ...]
    quiet: bool
    latency_jobs: int
    latency_gap: float
    latency_concurrency: int
    timeout: float
    json: bool
    keep_logs: bool
    analyze: bool
    pgworker_prefix: tuple[str, ...]
    floor: bool
    floor_clients: int | None
    #: The local queue's size in the batched mode (None: each worker's concurrency).
    local_queue: int | None
    output: Path | None

    def local_queue_size(self, concurrency: int) -> int:
        """The batched mode's local queue for a worker with ``concurrency``: the one the
        workers use and the floor claims."""
        return self.local_queue or concurrency
