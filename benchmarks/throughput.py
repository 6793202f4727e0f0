"""Throughput, latency and memory of pgworker against Node graphile-worker 0.17.3 and
against a raw-SQL floor, on the same database.

``make bench`` (or ``python -m benchmarks.throughput [options]``). For each configuration
of ``--modes`` (``default``: both sides' defaults; ``batched``: the local queue, pgworker
``--prefetch N`` against Node's localQueue of size N, N = ``--local-queue`` or else the
concurrency, with completeJobBatchDelay/failJobBatchDelay 0), ``--repeat`` times, each
side in a schema of its own made for the run:

1. enqueue: ``--jobs`` no-op jobs, ``--batch-size`` per call, the way an application
   does it: pgworker's ``Task.defer_many`` from this process, Node's
   ``WorkerUtils.addJobs`` from ``perf.js addjobs`` (each timing its calls only); then
   ``ANALYZE`` of the jobs table (untimed; ``--no-analyze`` skips it), so that neither
   side's claims depend on when autovacuum happens to gather statistics;
2. execute: ``--processes`` worker processes, each with ``--concurrency``, run until the
   jobs table is empty (``pgworker run benchmarks.bench_app:app --once`` against
   graphile-worker's ``runOnce`` in ``benchmarks/node/perf.js``); the clock runs from
   starting the processes to the table being empty, start-up included; each process's
   peak RSS is its ru_maxrss (wait4);
3. startup: the same processes on the now empty queue, to show how much of (2) is
   start-up;
4. latency: one long-running worker (``pgworker run`` / graphile-worker ``run()``),
   ``--latency-jobs`` jobs added one at a time through ``add_job`` with a gap; latency is
   from just before ``add_job`` to the first line of the task, both read from
   CLOCK_MONOTONIC (the tasks append it to a file);
5. the SQL floor (benchmarks/floor.py, ``--no-floor`` skips it): pgbench with prepared
   statements claiming the batch pgworker claims and deleting it in a second
   transaction, at the same concurrency, and 1,000-row inserts.

Uses DATABASE_URL when set, else the embedded PostgreSQL (``.pgworker/`` at the repo
root); ``--quiet`` turns off the per-job success log line on both sides. Prints a table
per configuration (medians, ratios to Node and to the floor) or, with ``--json``, one
JSON object, and writes that object to ``--output``; progress goes to stderr. The machine
is shared and noisy: compare the ratios within one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import (
    MODES,
    NODE_DIR,
    NODE_VERSION_PINNED,
    NPM_TIMEOUT,
    RESULTS_DIR,
    SIDES,
    BenchError,
    Options,
    compile_sources,
    progress,
)
from benchmarks.db import analyze, connect, database, drop_schema
from benchmarks.floor import Floor, measure_floor
from benchmarks.phases import enqueue, execute, latency, startup
from benchmarks.processes import Side
from benchmarks.report import LEGEND, Run, ratios, render_table, rounded, summarize


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
        "--modes",
        default=",".join(MODES),
        help="comma-separated configurations to run: default (both sides' defaults) and "
        "batched (the local queue: pgworker --prefetch N, Node localQueue of size N with "
        "completeJobBatchDelay/failJobBatchDelay 0, as in graphile-worker's perf test; N "
        "is --local-queue); default both",
    )
    add(
        "--local-queue",
        type=int,
        default=None,
        help="the local queue's size N in the batched mode, and the batch the floor claims "
        "(default: the concurrency; graphile-worker's perf test uses 500)",
    )
    add("--batching", action="store_true", help="the same as --modes batched")
    add("--no-floor", action="store_true", help="skip the raw-SQL floor (pgbench)")
    add(
        "--floor-clients",
        type=int,
        default=None,
        help="pgbench clients of the claim floor (default processes x concurrency)",
    )
    add(
        "--output",
        default=str(RESULTS_DIR / "results-{time}.json"),
        help="where to write the JSON results ({time}: the start time; '' for nowhere; "
        "default .bench/results-{time}.json)",
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
        ("--local-queue", 1 if args.local_queue is None else args.local_queue, 1),
    ):
        if value < low:
            parser.error(f"{name} must be at least {low}")
    modes = (
        ("batched",)
        if args.batching
        else tuple(m.strip() for m in args.modes.split(",") if m.strip())
    )
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
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
        modes=modes,
        quiet=args.quiet,
        latency_jobs=args.latency_jobs,
        latency_gap=args.latency_gap,
        latency_concurrency=args.latency_concurrency,
        timeout=args.timeout,
        json=args.json,
        keep_logs=args.keep_logs,
        analyze=not args.no_analyze,
        pgworker_prefix=tuple(shlex.split(args.pgworker_prefix)),
        floor=not args.no_floor,
        floor_clients=args.floor_clients,
        local_queue=args.local_queue,
        output=Path(args.output.replace("{time}", time.strftime("%Y%m%d-%H%M%S")))
        if args.output
        else None,
    )


def run_side(side: Side, url: str, logs: Path, index: int) -> Run:
    options = side.options
    schema = f"bench_{'pgw' if side.name == 'pgworker' else 'node'}_{secrets.token_hex(4)}"
    label = f"{side.name}-{'batched' if side.batching else 'default'}#{index + 1}"
    progress(f"[{label}] fresh schema {schema}")
    try:
        side.migrate(url, schema, logs)
        enqueue_s = enqueue(side, url, schema, options.jobs, options.batch_size, label)
        if options.analyze:
            analyze(url, schema)
        drained = execute(side, url, schema, logs, label)
        startup_s = startup(side, url, schema, logs, label)
        latencies, latency_rss = latency(side, url, schema, logs, label)
    finally:
        drop_schema(url, schema)
    if latencies:
        progress(
            f"[{label}] latency avg {statistics.fmean(latencies):.2f} ms, "
            f"max {max(latencies):.2f} ms"
        )
    return Run(
        side.name,
        schema,
        options.jobs,
        enqueue_s,
        drained.emptied_s,
        drained.exited_s,
        drained.cpu_s,
        startup_s,
        latencies,
        drained.peak_rss_kb,
        latency_rss,
        drained.first_done_s,
        drained.left_at_first,
    )


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


def run_mode(mode: str, options: Options, url: str, logs: Path) -> dict[str, Any]:
    """``--repeat`` runs of each side and of the floor in one configuration; returns the
    summaries, ratios and runs."""
    batching = mode == "batched"
    batch = options.local_queue_size(options.concurrency) if batching else 1
    clients = options.floor_clients or options.processes * options.concurrency
    runs: dict[str, list[Run]] = {side: [] for side in options.sides}
    floors: list[dict[str, Floor]] = []
    for index in range(options.repeat):
        # Alternate the order between repeats so that drift hits both sides.
        order = options.sides if index % 2 == 0 else tuple(reversed(options.sides))
        for name in order:
            runs[name].append(run_side(Side(name, options, batching), url, logs, index))
        if options.floor:
            floors.append(
                measure_floor(
                    url, options.jobs, batch, clients, options.batch_size, logs, f"{mode}"
                )
            )
    summaries = {name: summarize(side_runs) for name, side_runs in runs.items()}
    if floors:
        claims = statistics.median(f["claim"].per_second for f in floors)
        summaries["SQL floor"] = {
            # pgbench has no start-up: its rate stands for both drains.
            "execute_jobs_per_s": claims,
            "steady_jobs_per_s": claims,
            "enqueue_jobs_per_s": statistics.median(f["insert"].per_second for f in floors),
        }
    return {
        "mode": mode,
        "claim_batch": batch,
        "floor_clients": clients,
        "summaries": summaries,
        "ratios": {
            "pgworker/node": ratios(summaries, "node"),
            "pgworker/floor": ratios(summaries, "SQL floor"),
        },
        "runs": {name: [r.as_dict() for r in side_runs] for name, side_runs in runs.items()},
        "floor_runs": [
            {key: {**f.__dict__, "per_second": round(f.per_second, 1)} for key, f in fl.items()}
            for fl in floors
        ],
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    compile_sources()
    if "node" in options.sides:
        ensure_node()
    logs = Path(tempfile.mkdtemp(prefix="pgworker-bench-"))
    failed = False
    results: list[dict[str, Any]] = []
    try:
        with database() as (url, where):
            with connect(url) as conn:
                row = conn.execute("show server_version").fetchone()
            server = f"PostgreSQL {row[0] if row else '?'} ({where})"
            progress(f"{server}; logs in {logs}; load average {os.getloadavg()}")
            for mode in options.modes:
                results.append(run_mode(mode, options, url, logs))
    except (BenchError, psycopg.Error, subprocess.SubprocessError, OSError) as exc:
        failed = True
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if (options.keep_logs or failed) and any(logs.iterdir()):
            progress(f"worker logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)

    load = os.getloadavg()
    tables = []
    for result in results:
        mode = result["mode"]
        described = (
            "both sides' defaults"
            if mode == "default"
            else f"local queue of {result['claim_batch']}: pgworker --prefetch, Node localQueue "
            "+ batch delays 0"
        )
        header = (
            f"[{mode}] {described}; {options.jobs} jobs, {options.processes} process(es) x "
            f"concurrency {options.concurrency}, enqueue {options.batch_size} per call, "
            f"floor: claim {result['claim_batch']} with {result['floor_clients']} clients"
        )
        tables.append(render_table(header, result["summaries"], result["ratios"]))
    title = (
        f"pgworker vs graphile-worker {NODE_VERSION_PINNED} and the SQL floor, median of "
        f"{options.repeat} run(s), {'quiet' if options.quiet else 'default logging'}, "
        f"{server}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    document = {
        "title": title,
        "server": server,
        "load_average": load,
        "graphile_worker": NODE_VERSION_PINNED,
        "options": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in options.__dict__.items()
            if key not in ("json", "keep_logs")
        },
        "modes": [
            {
                **result,
                "summaries": {k: rounded(v) for k, v in result["summaries"].items()},
                "ratios": {k: rounded(v) for k, v in result["ratios"].items()},
            }
            for result in results
        ],
    }
    if options.output is not None:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(document, indent=2) + "\n")
        progress(f"results written to {options.output}")
    if options.json:
        print(json.dumps(document, indent=2))
    else:
        print("\n\n".join([title, *tables, LEGEND]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
