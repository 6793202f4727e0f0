"""Throughput and latency of pgworker against Node graphile-worker 0.17.3, same database.

``make bench`` (or ``python -m benchmarks.throughput [options]``). For each side, in a
schema of its own made for the run:

1. enqueue: ``--jobs`` no-op jobs through the SQL function ``add_jobs``, in batches of
   ``--batch-size``, from this process: the same statement for both sides; then
   ``ANALYZE`` of the jobs table (untimed; ``--no-analyze`` skips it), so that neither
   side's claims depend on when autovacuum happens to gather statistics;
2. execute: ``--processes`` worker processes, each with ``--concurrency``, run until the
   jobs table is empty (``pgworker run benchmarks.bench_app:app --once`` against
   graphile-worker's ``runOnce`` in ``benchmarks/node/perf.js``); the clock runs from
   starting the processes to the table being empty, start-up included;
3. startup: the same processes on the now empty queue, to show how much of (2) is
   start-up;
4. latency: one long-running worker (``pgworker run`` / graphile-worker ``run()``),
   ``--latency-jobs`` jobs added one at a time through ``add_job`` with a gap; latency is
   from just before ``add_job`` to the first line of the task, both read from
   CLOCK_MONOTONIC (the tasks append it to a file).

Uses DATABASE_URL when set, else the embedded PostgreSQL (``.pgworker/`` at the repo
root). Both sides run with their default settings; ``--node-batching`` gives Node the
local queue and batched completions of graphile-worker's own perf test, and ``--quiet``
turns off the per-job success log line on both sides. Prints a table (or, with
``--json``, one JSON object) on stdout and progress on stderr. The machine is shared and
noisy: compare the pgworker/node ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.bench_app import LATENCY_FILE_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"
APP_TARGET = "benchmarks.bench_app:app"
SIDES = ("pgworker", "node")
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


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    jobs: int
    batch_size: int
    processes: int
    concurrency: int
    repeat: int
    sides: tuple[str, ...]
    batching: bool
    quiet: bool
    latency_jobs: int
    latency_gap: float
    latency_concurrency: int
    timeout: float
    json: bool
    keep_logs: bool
    analyze: bool
    pgworker_prefix: tuple[str, ...]


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="pgworker against Node graphile-worker 0.17.3 on the same database.",
    )
    add = parser.add_argument
    add("--jobs", type=int, default=20_000, help="jobs per throughput run (default 20000)")
    add("--batch-size", type=int, default=1000, help="jobs per add_jobs call (default 1000)")
    add("--processes", type=int, default=2, help="worker processes per side (default 2)")
    add("--concurrency", type=int, default=8, help="jobs at once per process (default 8)")
    add("--repeat", type=int, default=1, help="runs per side; the median is shown (default 1)")
    add(
        "--sides",
        default=",".join(SIDES),
        help="comma-separated sides to run: pgworker,node (default both)",
    )
    add(
        "--batching",
        action="store_true",
        help="both sides claim in batches: Node gets localQueue size = concurrency and "
        "completeJobBatchDelay/failJobBatchDelay 0 (as in graphile-worker's perf test), "
        "pgworker --prefetch = concurrency; default: both sides' defaults",
    )
    add(
        "--quiet",
        action="store_true",
        help="no per-job success log on either side (pgworker --log-level warning, Node "
        "NO_LOG_SUCCESS=1); default: both sides' default logging",
    )
    add("--latency-jobs", type=int, default=50, help="jobs in the latency phase (default 50)")
    add(
        "--latency-gap",
        type=float,
        default=0.05,
        help="seconds between two latency jobs (default 0.05)",
    )
    add(
        "--latency-concurrency",
        type=int,
        default=1,
        help="concurrency of the latency phase's single worker (default 1)",
    )
    add(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one execute phase may take before it is abandoned (default 300)",
    )
    add(
        "--no-analyze",
        action="store_true",
        help="skip the ANALYZE of the jobs table between enqueueing and executing (without "
        "it, the first claims plan on an empty table's statistics until autovacuum runs)",
    )
    add("--json", action="store_true", help="print one JSON object instead of the table")
    add("--keep-logs", action="store_true", help="keep the workers' logs (path on stderr)")
    add(
        "--pgworker-prefix",
        default="",
        help="command prepended to the pgworker processes of the execute phase, e.g. "
        "'py-spy record -f raw -o prof-{i}.txt --' to profile them ({i}: process index)",
    )
    args = parser.parse_args(argv)
    sides = tuple(s.strip() for s in args.sides.split(",") if s.strip())
    for name, value, low in (
        ("--jobs", args.jobs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--processes", args.processes, 1),
        ("--concurrency", args.concurrency, 1),
        ("--repeat", args.repeat, 1),
        ("--latency-jobs", args.latency_jobs, 0),
        ("--latency-concurrency", args.latency_concurrency, 1),
    ):
        if value < low:
            parser.error(f"{name} must be at least {low}")
    if not sides or any(s not in SIDES for s in sides):
        parser.error(f"--sides takes a comma-separated subset of {','.join(SIDES)}")
    if args.latency_gap < 0 or args.timeout <= 0:
        parser.error("--latency-gap must be >= 0 and --timeout > 0")
    return Options(
        jobs=args.jobs,
        batch_size=args.batch_size,
        processes=args.processes,
        concurrency=args.concurrency,
        repeat=args.repeat,
        sides=sides,
        batching=args.batching,
        quiet=args.quiet,
        latency_jobs=args.latency_jobs,
        latency_gap=args.latency_gap,
        latency_concurrency=args.latency_concurrency,
        timeout=args.timeout,
        json=args.json,
        keep_logs=args.keep_logs,
        analyze=not args.no_analyze,
        pgworker_prefix=tuple(shlex.split(args.pgworker_prefix)),
    )


# -- the two sides ----------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """How to migrate a schema and start workers for one implementation."""

    name: str
    options: Options

    def migrate(self, url: str, schema: str, logs: Path) -> None:
        if self.name == "pgworker":
            from pgworker import App

            with App(database_url=url, schema=schema) as app:
                app.migrate()
            return
        log = logs / f"node-migrate-{schema}.log"
        with open(log, "wb") as out:
            code = subprocess.run(
                ["node", "perf.js", "migrate", url, schema],
                cwd=NODE_DIR,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=EXIT_TIMEOUT,
                check=False,
            ).returncode
        if code != 0:
            raise BenchError(f"node perf.js migrate exited {code}:\n{tail(log)}")

    def command(
        self, url: str, schema: str, *, once: bool, concurrency: int, profiled: int | None = None
    ) -> tuple[list[str], Path]:
        """The argv of one worker process, and the directory to start it in; ``profiled``
        is the process's index when ``--pgworker-prefix`` applies ({i} in it becomes it)."""
        if self.name == "pgworker":
            prefix = [] if profiled is None else self.options.pgworker_prefix
            argv = [
                *(part.replace("{i}", str(profiled)) for part in prefix),
                *pgworker_executable(),
                "--log-level",
                "warning" if self.options.quiet else "info",
                "run",
                APP_TARGET,
                *(["--once"] if once else []),
                "--concurrency",
                str(concurrency),
                *(["--prefetch", str(concurrency)] if self.options.batching else []),
                "--database-url",
                url,
                "--schema",
                schema,
            ]
            return argv, ROOT
        argv = ["node", "perf.js", "once" if once else "run", url, schema, str(concurrency)]
        if self.options.batching:
            argv.append("--batching")
        return argv, NODE_DIR

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)  # every process gets the URL explicitly
        if self.options.quiet:
            env["NO_LOG_SUCCESS"] = "1"
        else:
            env.pop("NO_LOG_SUCCESS", None)
        env.update(extra or {})
        return env


def pgworker_executable() -> list[str]:
    script = Path(sys.executable).parent / "pgworker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pgworker.cli"]


# -- processes --------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process and its log file."""

    process: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def running(self) -> bool:
        return self.process.poll() is None


def spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Worker:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches the workers via us
        )
    return Worker(process, log, time.perf_counter())


def stop(worker: Worker, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if worker.running:
        worker.process.send_signal(signal.SIGTERM)
    try:
        return worker.process.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait(10)
        return worker.process.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


# -- database helpers -------------------------------------------------------------------


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    conn.execute(f"set statement_timeout = {STATEMENT_TIMEOUT_MS}")
    return conn


@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """Yield (url, description): DATABASE_URL, else the embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, "DATABASE_URL"
        return
    from pgworker.embedded import embedded_postgres

    progress("DATABASE_URL is not set: starting the embedded PostgreSQL in .pgworker/")
    with embedded_postgres(ROOT / ".pgworker") as embedded_url:
        yield embedded_url, "embedded"


def remaining_jobs(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> int:
    query = sql.SQL("select count(*) from {}._private_jobs").format(sql.Identifier(schema))
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def has_jobs(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> bool:
    """Whether any job is left: a cheap check (the primary key's first entry) for polling."""
    query = sql.SQL("select id from {}._private_jobs order by id limit 1").format(
        sql.Identifier(schema)
    )
    return conn.execute(query).fetchone() is not None


def analyze(url: str, schema: str) -> None:
    """Give the planner statistics of the filled table, so that both sides claim with
    the plan a long-lived queue would have, whenever autovacuum happens to run."""
    with connect(url) as conn:
        conn.execute(sql.SQL("analyze {}._private_jobs").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


# -- phases -----------------------------------------------------------------------------


def enqueue(url: str, schema: str, jobs: int, batch_size: int, label: str) -> float:
    """Add ``jobs`` noop jobs through ``add_jobs``; returns the seconds it took."""
    query = sql.SQL(
        "select count(*) from {schema}.add_jobs("
        "array(select json_populate_recordset(null::{schema}.job_spec, %s::json)))"
    ).format(schema=sql.Identifier(schema))
    batches = [
        json.dumps(
            [{"identifier": "noop", "payload": {"n": n}} for n in range(start, end)],
            separators=(",", ":"),
        )
        for start, end in (
            (start, min(jobs, start + batch_size)) for start in range(0, jobs, batch_size)
        )
    ]
    progress(f"[{label}] enqueueing {jobs} jobs in {len(batches)} add_jobs call(s)")
    added = 0
    with connect(url) as conn:
        started = time.perf_counter()
        for batch in batches:
            row = conn.execute(query, (batch,)).fetchone()
            added += int(row[0]) if row else 0
        elapsed = time.perf_counter() - started
    if added != jobs:
        raise BenchError(f"add_jobs added {added} jobs, not {jobs}")
    progress(f"[{label}] enqueued in {elapsed:.2f} s ({jobs / elapsed:,.0f} jobs/s)")
    return elapsed


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(
    side: Side, url: str, schema: str, logs: Path, label: str
) -> tuple[float, float, float]:
    """Run the workers until the table is empty: (seconds to empty, seconds to all exited,
    CPU seconds the worker processes used)."""
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
            while True:
                # Poll cheaply; count only for the progress line and the error messages.
                if not has_jobs(conn, schema):
                    emptied = time.perf_counter() - started
                    break
                now = time.perf_counter()
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
    return emptied, exited, cpu


def wait_exited(workers: list[Worker], started: float, label: str) -> float:
    """Wait (bounded) for ``--once`` workers to exit by themselves with code 0."""
    for worker in workers:
        try:
            code = worker.process.wait(EXIT_TIMEOUT)
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


def latency(side: Side, url: str, schema: str, logs: Path, label: str) -> list[float]:
    """Latencies in ms from just before add_job to the task's start, one per job."""
    options = side.options
    if options.latency_jobs == 0:
        return []
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
    return [(starts[n] - sent[n]) / 1e6 for n in range(options.latency_jobs)]


def read_starts(path: Path) -> dict[int, int]:
    starts: dict[int, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            starts[int(parts[0])] = int(parts[1])
    return starts


def wait_for(condition: Callable[[], bool], timeout: float, worker: Worker, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not worker.running:
            raise BenchError(
                f"{what}: it exited ({worker.process.returncode}):\n{tail(worker.log)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{what} within {timeout:.0f} s:\n{tail(worker.log)}")
        time.sleep(0.02)


# -- one run of one side ----------------------------------------------------------------


@dataclass
class Run:
    side: str
    schema: str
    jobs: int
    enqueue_s: float
    execute_s: float
    exit_s: float
    worker_cpu_s: float
    startup_s: float
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "schema": self.schema,
            "jobs": self.jobs,
            "enqueue_s": round(self.enqueue_s, 4),
            "enqueue_jobs_per_s": round(self.jobs / self.enqueue_s, 1),
            "execute_s": round(self.execute_s, 4),
            "execute_jobs_per_s": round(self.jobs / self.execute_s, 1),
            "all_exited_s": round(self.exit_s, 4),
            "worker_cpu_s": round(self.worker_cpu_s, 3),
            "startup_s": round(self.startup_s, 4),
            "latencies_ms": [round(x, 3) for x in self.latencies_ms],
        }


def run_side(side: Side, url: str, logs: Path, index: int) -> Run:
    options = side.options
    schema = f"bench_{'pgw' if side.name == 'pgworker' else 'node'}_{secrets.token_hex(4)}"
    label = f"{side.name}#{index + 1}"
    progress(f"[{label}] fresh schema {schema}")
    try:
        side.migrate(url, schema, logs)
        enqueue_s = enqueue(url, schema, options.jobs, options.batch_size, label)
        if options.analyze:
            analyze(url, schema)
        execute_s, exit_s, cpu_s = execute(side, url, schema, logs, label)
        startup_s = startup(side, url, schema, logs, label)
        latencies = latency(side, url, schema, logs, label)
    finally:
        drop_schema(url, schema)
    if latencies:
        progress(
            f"[{label}] latency avg {statistics.fmean(latencies):.2f} ms, "
            f"max {max(latencies):.2f} ms"
        )
    return Run(
        side.name, schema, options.jobs, enqueue_s, execute_s, exit_s, cpu_s, startup_s, latencies
    )


# -- summary ----------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(runs: list[Run]) -> dict[str, float | None]:
    latencies = [x for run in runs for x in run.latencies_ms]
    summary: dict[str, float | None] = {
        "execute_jobs_per_s": statistics.median(r.jobs / r.execute_s for r in runs),
        "enqueue_jobs_per_s": statistics.median(r.jobs / r.enqueue_s for r in runs),
        "worker_cpu_s": statistics.median(r.worker_cpu_s for r in runs),
        "startup_s": statistics.median(r.startup_s for r in runs),
        "latency_avg_ms": None,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "latency_max_ms": None,
    }
    if latencies:
        summary.update(
            latency_avg_ms=statistics.fmean(latencies),
            latency_p50_ms=percentile(latencies, 0.50),
            latency_p95_ms=percentile(latencies, 0.95),
            latency_max_ms=max(latencies),
        )
    return summary


COLUMNS = (
    ("execute_jobs_per_s", "execute jobs/s", "{:,.0f}"),
    ("enqueue_jobs_per_s", "enqueue jobs/s", "{:,.0f}"),
    ("worker_cpu_s", "worker CPU s", "{:.2f}"),
    ("startup_s", "startup s", "{:.2f}"),
    ("latency_avg_ms", "lat avg ms", "{:.2f}"),
    ("latency_p50_ms", "lat p50 ms", "{:.2f}"),
    ("latency_p95_ms", "lat p95 ms", "{:.2f}"),
    ("latency_max_ms", "lat max ms", "{:.2f}"),
)


def ratios(summaries: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    if "pgworker" not in summaries or "node" not in summaries:
        return {}
    out: dict[str, float | None] = {}
    for key, _, _ in COLUMNS:
        mine, theirs = summaries["pgworker"][key], summaries["node"][key]
        out[key] = mine / theirs if mine is not None and theirs else None
    return out


def rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {key: None if value is None else round(value, 3) for key, value in values.items()}


def render_table(
    header: str, summaries: dict[str, dict[str, float | None]], ratio: dict[str, float | None]
) -> str:
    rows = [["", *(title for _, title, _ in COLUMNS)]]
    for name, summary in summaries.items():
        cells = [name]
        for key, _, fmt in COLUMNS:
            value = summary[key]
            cells.append("-" if value is None else fmt.format(value))
        rows.append(cells)
    if ratio:
        rows.append(
            ["pgworker/node"]
            + ["-" if ratio[key] is None else f"{ratio[key]:.2f}x" for key, _, _ in COLUMNS]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
    lines.append(
        "execute = jobs / seconds from starting the processes to an empty table (start-up "
        "included); worker CPU = user+system seconds of those processes; startup = the same "
        "processes on an empty queue; a ratio > 1 means pgworker is faster in jobs/s, and "
        "uses more CPU or time in the other columns."
    )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------


def ensure_node() -> None:
    if shutil.which("node") is None:
        raise BenchError("node is not installed: install Node 18+ or pass --sides pgworker")
    if not (NODE_DIR / "node_modules" / "graphile-worker").is_dir():
        progress("benchmarks/node/node_modules is missing: running npm ci there")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=NPM_TIMEOUT,
            stdout=sys.stderr,
        )
    package = json.loads(
        (NODE_DIR / "node_modules" / "graphile-worker" / "package.json").read_text()
    )
    if package.get("version") != NODE_VERSION_PINNED:
        raise BenchError(
            f"benchmarks/node has graphile-worker {package.get('version')}, expected "
            f"{NODE_VERSION_PINNED}: run npm ci in benchmarks/node"
        )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if "node" in options.sides:
        ensure_node()
    logs = Path(tempfile.mkdtemp(prefix="pgworker-bench-"))
    failed = False
    try:
        with database() as (url, where):
            with connect(url) as conn:
                row = conn.execute("show server_version").fetchone()
            server = f"PostgreSQL {row[0] if row else '?'} ({where})"
            progress(f"{server}; logs in {logs}")
            runs: dict[str, list[Run]] = {side: [] for side in options.sides}
            for index in range(options.repeat):
                # Alternate the order between repeats so that drift hits both sides.
                order = options.sides if index % 2 == 0 else tuple(reversed(options.sides))
                for name in order:
                    runs[name].append(run_side(Side(name, options), url, logs, index))
    except (BenchError, psycopg.Error, subprocess.SubprocessError, OSError) as exc:
        failed = True
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if (options.keep_logs or failed) and any(logs.iterdir()):
            progress(f"worker logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)

    summaries = {name: summarize(side_runs) for name, side_runs in runs.items()}
    ratio = ratios(summaries)
    node_mode = "batching (Node localQueue, pgworker prefetch)" if options.batching else "defaults"
    header = (
        f"pgworker vs graphile-worker {NODE_VERSION_PINNED}: {options.jobs} jobs, "
        f"{options.processes} process(es) x concurrency {options.concurrency}, "
        f"{node_mode}, {'quiet' if options.quiet else 'default logging'}, "
        f"{'' if options.analyze else 'no '}ANALYZE before executing, "
        f"latency {options.latency_jobs} jobs (concurrency {options.latency_concurrency}), "
        f"median of {options.repeat} run(s), {server}"
    )
    if options.json:
        result = {
            "server": server,
            "options": {
                key: value
                for key, value in options.__dict__.items()
                if key not in ("json", "keep_logs")
            },
            "graphile_worker": NODE_VERSION_PINNED,
            "summary": {name: rounded(summary) for name, summary in summaries.items()},
            "ratios_pgworker_over_node": rounded(ratio),
            "runs": {name: [r.as_dict() for r in side_runs] for name, side_runs in runs.items()},
        }
        print(json.dumps(result, indent=2))
    else:
        print(render_table(header, summaries, ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
