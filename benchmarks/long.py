"""A long run: 1,000,000 jobs through pgworker workers, watching their memory.

``make bench-long`` (or ``python -m benchmarks.long [options]``). In a fresh schema: the
jobs are added through ``Task.defer_many``, then ``--processes`` long-running workers
(``pgworker run``, ``--prefetch`` = concurrency unless ``--no-prefetch``) drain them while
this process reads each worker's VmRSS from /proc every half second. RSS "at start" is
the first reading after ``--warmup`` of the jobs are done (imports, pools and caches
settled), "at end" the reading when the table is empty, before the workers are stopped.
Prints a table (and writes JSON to ``--output``); exits 1 if a worker grew by more than
``--max-growth``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import RESULTS_DIR, BenchError, Options, compile_sources, progress
from benchmarks.db import analyze, connect, database, drop_schema, remaining_jobs
from benchmarks.phases import defer_many
from benchmarks.processes import Side, Worker, spawn, stop

SAMPLE_EVERY = 0.5


@dataclass
class Memory:
    """The VmRSS readings of one worker process, in kB, with the jobs done at each."""

    pid: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (jobs done, kB)
    start_kb: int | None = None
    end_kb: int | None = None
    peak_kb: int | None = None

    @property
    def growth(self) -> float | None:
        if not self.start_kb or self.end_kb is None:
            return None
        return self.end_kb / self.start_kb - 1


def status_kb(pid: int, field_name: str) -> int | None:
    """One ``kB`` field of /proc/PID/status (VmRSS, VmHWM), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long", description=__doc__)
    add = parser.add_argument
    add("--jobs", type=int, default=1_000_000, help="jobs (default 1000000)")
    add("--batch-size", type=int, default=1000, help="jobs per defer_many (default 1000)")
    add("--processes", type=int, default=2, help="worker processes (default 2)")
    add("--concurrency", type=int, default=8, help="concurrency of each (default 8)")
    add("--no-prefetch", action="store_true", help="claim one job at a time")
    add("--warmup", type=float, default=0.05, help="fraction done before 'start' (0.05)")
    add("--max-growth", type=float, default=0.10, help="allowed RSS growth (default 0.10)")
    add("--timeout", type=float, default=3600.0, help="seconds the drain may take (3600)")
    add("--output", default=str(RESULTS_DIR / "long-{time}.json"), help="JSON results file")
    return parser.parse_args(argv)


def bench_options(args: argparse.Namespace) -> Options:
    """The throughput benchmark's options, for building the workers' command lines."""
    return Options(
        jobs=args.jobs,
        batch_size=args.batch_size,
        processes=args.processes,
        concurrency=args.concurrency,
        repeat=1,
        sides=("pgworker",),
        modes=("default" if args.no_prefetch else "batched",),
        quiet=True,
        latency_jobs=0,
        latency_gap=0.0,
        latency_concurrency=1,
        timeout=args.timeout,
        json=False,
        keep_logs=False,
        analyze=True,
        pgworker_prefix=(),
        floor=False,
        floor_clients=None,
        local_queue=None,
        output=None,
    )


def drain(
    side: Side, url: str, schema: str, jobs: int, warmup: float, timeout: float, logs: Path
) -> tuple[float, list[Memory]]:
    """Run the workers until the table is empty, reading their memory; (seconds, memory)."""
    options = side.options
    workers: list[Worker] = []
    for i in range(options.processes):
        argv, cwd = side.command(url, schema, once=False, concurrency=options.concurrency)
        workers.append(spawn(argv, cwd, side.environment(), logs / f"long-{i}.log"))
    memory = [Memory(w.process.pid) for w in workers]
    started = time.perf_counter()
    next_report = started + 10
    try:
        with connect(url) as conn:
            while True:
                left = remaining_jobs(conn, schema)
                done = jobs - left
                for m in memory:
                    rss = status_kb(m.pid, "VmRSS")
                    if rss is not None:
                        m.samples.append((done, rss))
                        if m.start_kb is None and done >= warmup * jobs:
                            m.start_kb = rss
                if left == 0:
                    for m in memory:
                        m.end_kb = status_kb(m.pid, "VmRSS")
                        m.peak_kb = status_kb(m.pid, "VmHWM")
                    return time.perf_counter() - started, memory
                now = time.perf_counter()
                if not all(w.running for w in workers):
                    raise BenchError(f"a worker exited with {left} jobs left (logs in {logs})")
                if now - started > timeout:
                    raise BenchError(f"{left} jobs left after {timeout:.0f} s")
                if now >= next_report:
                    rss = ", ".join(f"{m.samples[-1][1] / 1024:.0f}" for m in memory if m.samples)
                    progress(
                        f"{done}/{jobs} done, {done / (now - started):,.0f} jobs/s, RSS MB {rss}"
                    )
                    next_report = now + 10
                time.sleep(SAMPLE_EVERY)
    finally:
        for worker in workers:
            stop(worker)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_sources()
    options = bench_options(args)
    side = Side("pgworker", options, batching=not args.no_prefetch)
    logs = Path(tempfile.mkdtemp(prefix="pgworker-bench-long-"))
    schema = f"bench_long_{secrets.token_hex(4)}"
    try:
        with database() as (url, _where):
            try:
                side.migrate(url, schema, logs)
                progress(f"enqueueing {args.jobs} jobs through defer_many into {schema}")
                enqueue_s, _ = defer_many(url, schema, args.jobs, args.batch_size)
                progress(f"enqueued in {enqueue_s:.1f} s ({args.jobs / enqueue_s:,.0f} jobs/s)")
                analyze(url, schema)
                seconds, memory = drain(
                    side, url, schema, args.jobs, args.warmup, args.timeout, logs
                )
            finally:
                drop_schema(url, schema)
    except (BenchError, psycopg.Error, OSError) as exc:
        print(f"long benchmark failed: {exc} (logs in {logs})", file=sys.stderr)
        return 1
    shutil.rmtree(logs, ignore_errors=True)
    load = os.getloadavg()
    lines = [
        f"pgworker, {args.jobs} jobs, {args.processes} process(es) x concurrency "
        f"{args.concurrency}, {'no prefetch' if args.no_prefetch else 'prefetch'}: drained in "
        f"{seconds:.1f} s ({args.jobs / seconds:,.0f} jobs/s), load average {load[0]:.2f}",
        f"{'worker':>8}  {'RSS after warm-up MB':>20}  {'RSS at end MB':>13}  "
        f"{'growth':>7}  {'peak MB':>7}",
    ]
    failed = False
    for i, m in enumerate(memory):
        growth = m.growth
        failed |= growth is None or growth > args.max_growth
        lines.append(
            f"{i:>8}  {(m.start_kb or 0) / 1024:>20.1f}  {(m.end_kb or 0) / 1024:>13.1f}  "
            f"{'-' if growth is None else f'{growth:+.1%}':>7}  {(m.peak_kb or 0) / 1024:>7.1f}"
        )
    print("\n".join(lines))
    document: dict[str, Any] = {
        "jobs": args.jobs,
        "options": vars(args),
        "drain_s": seconds,
        "enqueue_s": enqueue_s,
        "load_average": load,
        "workers": [
            {
                "start_kb": m.start_kb,
                "end_kb": m.end_kb,
                "peak_kb": m.peak_kb,
                "growth": m.growth,
                "samples": m.samples[:: max(1, len(m.samples) // 200)],
            }
            for m in memory
        ],
    }
    if args.output:
        output = Path(args.output.replace("{time}", time.strftime("%Y%m%d-%H%M%S")))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(document, indent=2) + "\n")
        progress(f"results written to {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
