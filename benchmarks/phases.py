"""The phases of one run of one side: enqueue, execute, startup, latency."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from psycopg import sql

from benchmarks.bench_app import LATENCY_FILE_VARIABLE
from benchmarks.common import (
    EXIT_TIMEOUT,
    LATENCY_WAIT_TIMEOUT,
    NODE_DIR,
    PROGRESS_EVERY,
    WORKER_READY_TIMEOUT,
    BenchError,
    progress,
)
from benchmarks.db import connect, has_jobs, remaining_jobs
from benchmarks.processes import Side, Worker, reap, spawn, stop, tail, wait_for


def enqueue(side: Side, url: str, schema: str, jobs: int, batch_size: int, label: str) -> float:
    """Add ``jobs`` noop jobs, ``batch_size`` per call, the way each side's applications
    do: pgworker's ``Task.defer_many`` in this process, Node's ``WorkerUtils.addJobs`` in
    ``perf.js addjobs``; returns the seconds the calls took (start-up left out)."""
    progress(f"[{label}] enqueueing {jobs} jobs, {batch_size} per call")
    if side.name == "pgworker":
        elapsed, added = defer_many(url, schema, jobs, batch_size)
    else:
        done = subprocess.run(
            ["node", "perf.js", "addjobs", url, schema, str(jobs), str(batch_size)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT * 5,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"node perf.js addjobs exited {done.returncode}:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        elapsed, added = float(result["seconds"]), int(result["added"])
    if added != jobs:
        raise BenchError(f"[{label}] {added} jobs were added, not {jobs}")
    progress(f"[{label}] enqueued in {elapsed:.2f} s ({jobs / elapsed:,.0f} jobs/s)")
    return elapsed


def defer_many(url: str, schema: str, jobs: int, batch_size: int) -> tuple[float, int]:
    """pgworker's side of ``enqueue``: seconds the defer_many calls took, jobs added."""
    from pgworker import App

    app = App(database_url=url, schema=schema, max_pool_size=1)

    @app.task("noop")
    def noop(payload: dict[str, int]) -> None:
        """The benchmark's no-op task (its payload type as in a real app)."""

    payloads = [
        [{"n": n} for n in range(start, min(jobs, start + batch_size))]
        for start in range(0, jobs, batch_size)
    ]
    added = 0
    with app:
        with app.store.connection() as conn:  # the pool's connection, made before timing
            conn.execute("select 1")
        started = time.perf_counter()
        for batch in payloads:
            added += len(noop.defer_many(batch))
        elapsed = time.perf_counter() - started
    return elapsed, added


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Drained(NamedTuple):
    """What the execute phase measured."""

    #: Seconds from starting the processes to an empty table.
    emptied_s: float
    #: Seconds from starting them to the last one's exit.
    exited_s: float
    #: CPU seconds the worker processes used.
    cpu_s: float
    #: The largest peak RSS of one of them, in kB.
    peak_rss_kb: int
    #: Seconds from starting them to the first poll that saw a job done, and how many
    #: jobs were left then: the drain after start-up is left / (emptied - first).
    first_done_s: float
    left_at_first: int


def execute(side: Side, url: str, schema: str, logs: Path, label: str) -> Drained:
    """Run the workers until the table is empty; see ``Drained`` for what is measured."""
    options = side.options
    workers: list[Worker] = []
    progress(
        f"[{label}] executing with {options.processes} process(es) x concurrency "
        f"{options.concurrency}"
    )
    try:
        with connect(url) as conn:
            total = remaining_jobs(conn, schema)
            cpu_before = children_cpu()
            started = time.perf_counter()
            for i in range(options.processes):
                argv, cwd = side.command(
                    url, schema, once=True, concurrency=options.concurrency, profiled=i
                )
                log = logs / f"{label}-execute-{i}.log"
                workers.append(spawn(argv, cwd, side.environment(), log))
            deadline = started + options.timeout
            next_report = started + PROGRESS_EVERY
            first: tuple[float, int] | None = None
            while True:
                # Poll cheaply; count only for the progress line and the error messages.
                if not has_jobs(conn, schema):
                    emptied = time.perf_counter() - started
                    break
                now = time.perf_counter()
                if first is None and (left := remaining_jobs(conn, schema)) < total:
                    first = (now - started, left)
                if not any(w.running for w in workers):
                    codes = [w.process.returncode for w in workers]
                    raise BenchError(
                        f"[{label}] every worker exited (codes {codes}) with "
                        f"{remaining_jobs(conn, schema)} job(s) left; last lines of "
                        f"{workers[0].log}:\n{tail(workers[0].log)}"
                    )
                if now > deadline:
                    raise BenchError(
                        f"[{label}] {remaining_jobs(conn, schema)} job(s) left after "
                        f"{options.timeout:.0f} s (--timeout)"
                    )
                if now >= next_report:
                    done = total - remaining_jobs(conn, schema)
                    progress(
                        f"[{label}] {done}/{total} done, {now - started:.1f} s, "
                        f"{done / (now - started):,.0f} jobs/s so far"
                    )
                    next_report = now + PROGRESS_EVERY
                time.sleep(0.02)
        exited = wait_exited(workers, started, label)
        cpu = children_cpu() - cpu_before
    finally:
        for worker in workers:
            if worker.running:
                stop(worker)
    progress(
        f"[{label}] queue empty after {emptied:.2f} s ({total / emptied:,.0f} jobs/s); "
        f"the workers used {cpu:.2f} CPU s"
    )
    first_s, left = first if first is not None else (emptied, 0)
    return Drained(emptied, exited, cpu, max(w.peak_rss_kb or 0 for w in workers), first_s, left)


def wait_exited(workers: list[Worker], started: float, label: str) -> float:
    """Wait (bounded) for ``--once`` workers to exit by themselves with code 0."""
    for worker in workers:
        try:
            code = reap(worker, EXIT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(
                f"[{label}] a worker did not exit within {EXIT_TIMEOUT:.0f} s of the queue "
                f"emptying:\n{tail(worker.log)}"
            ) from exc
        if code != 0:
            raise BenchError(f"[{label}] a worker exited with {code}:\n{tail(worker.log)}")
    return time.perf_counter() - started


def startup(side: Side, url: str, schema: str, logs: Path, label: str) -> float:
    """Seconds for the execute phase's processes to start and exit on an empty queue."""
    options = side.options
    started = time.perf_counter()
    workers = []
    for i in range(options.processes):
        argv, cwd = side.command(url, schema, once=True, concurrency=options.concurrency)
        workers.append(spawn(argv, cwd, side.environment(), logs / f"{label}-startup-{i}.log"))
    try:
        return wait_exited(workers, started, label)
    finally:
        for worker in workers:
            if worker.running:
                stop(worker)


def latency(side: Side, url: str, schema: str, logs: Path, label: str) -> tuple[list[float], int]:
    """Latencies in ms from just before add_job to the task's start, one per job; and the
    peak RSS in kB of the (long-running) worker."""
    options = side.options
    if options.latency_jobs == 0:
        return [], 0
    record = logs / f"{label}-latency.txt"
    record.touch()
    argv, cwd = side.command(url, schema, once=False, concurrency=options.latency_concurrency)
    env = side.environment({LATENCY_FILE_VARIABLE: str(record)})
    worker = spawn(argv, cwd, env, logs / f"{label}-latency.log")
    add_job = sql.SQL("select {}.add_job('latency', json_build_object('n', %s::int))").format(
        sql.Identifier(schema)
    )
    sent: dict[int, int] = {}
    try:
        with connect(url) as conn:
            # Warm-up: once these ran, the worker is up (and listening since its start).
            warmup = 5
            for n in range(1, warmup + 1):
                conn.execute(add_job, (-n,))
            wait_for(
                lambda: sum(1 for n in read_starts(record) if n < 0) >= warmup,
                WORKER_READY_TIMEOUT,
                worker,
                f"[{label}] the latency worker did not run its warm-up jobs",
            )
            time.sleep(1.0)  # let things settle, as graphile-worker's latencyTest does
            progress(
                f"[{label}] latency: {options.latency_jobs} jobs, one every "
                f"{options.latency_gap * 1000:.0f} ms"
            )
            for n in range(options.latency_jobs):
                sent[n] = time.monotonic_ns()
                conn.execute(add_job, (n,))
                time.sleep(options.latency_gap)
            wait_for(
                lambda: len([n for n in read_starts(record) if n >= 0]) >= options.latency_jobs,
                LATENCY_WAIT_TIMEOUT,
                worker,
                f"[{label}] not every latency job ran",
            )
    finally:
        code = stop(worker)
    if code != 0:
        raise BenchError(f"[{label}] the latency worker exited with {code}:\n{tail(worker.log)}")
    starts = read_starts(record)
    latencies = [(starts[n] - sent[n]) / 1e6 for n in range(options.latency_jobs)]
    return latencies, worker.peak_rss_kb or 0


def read_starts(path: Path) -> dict[int, int]:
    starts: dict[int, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            starts[int(parts[0])] = int(parts[1])
    return starts
