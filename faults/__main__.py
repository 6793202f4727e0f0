"""``python -m faults`` (``make faults``): run pgworker through each fault on a private
PostgreSQL cluster and print what became of the jobs."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from faults.cluster import Cluster
from faults.harness import Settings, run_fault
from faults.injections import FAULTS
from faults.report import table, write_json

#: Connections the cluster allows: the idle-connections fault holds 300 of them, and
#: leaves about 10 beyond what the worker and the harness already use.
MAX_CONNECTIONS = 340


def parse(argv: list[str] | None) -> argparse.Namespace:
    names = [fault.name for fault in FAULTS]
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__)
    parser.add_argument("--only", help=f"comma-separated faults to run, of: {','.join(names)}")
    parser.add_argument("--skip", default="", help="comma-separated faults to leave out")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply fault durations")
    parser.add_argument("--rate", type=float, default=40.0, help="jobs added per second")
    parser.add_argument("--job-seconds", type=float, default=0.1, help="each job's sleep")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads")
    parser.add_argument("--before", type=float, default=10.0, help="seconds before a fault")
    parser.add_argument("--after", type=float, default=20.0, help="seconds after a fault")
    parser.add_argument("--min-jobs", type=int, default=1000, help="jobs each fault needs")
    parser.add_argument("--json", type=Path, default=Path("faults/results.json"))
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else names
    unknown = set(chosen) - set(names) | set(filter(None, args.skip.split(","))) - set(names)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    args.faults = [f for f in FAULTS if f.name in chosen and f.name not in args.skip.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen faults one after the other; exit 1 if any had a problem."""
    args = parse(argv)
    # The load's pool retries through outages; its warnings would drown the progress.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    settings = Settings(
        rate=args.rate,
        job_seconds=args.job_seconds,
        concurrency=args.concurrency,
        before=args.before,
        after=args.after,
        scale=args.scale,
        min_jobs=args.min_jobs,
    )
    logs = Path(tempfile.mkdtemp(prefix="pgw-faults-logs-"))
    started = time.monotonic()
    results = []
    with Cluster(max_connections=MAX_CONNECTIONS) as cluster:
        print(f"[faults] cluster on 127.0.0.1:{cluster.port}, logs in {logs}", flush=True)
        for fault in args.faults:
            try:  # a fault that failed half-way may have left the server down
                psycopg.connect(cluster.url, connect_timeout=3).close()
            except psycopg.OperationalError:
                cluster.start()
            print(f"[faults] {time.strftime('%H:%M:%S')} {fault.name}...", flush=True)
            result = run_fault(cluster, fault, settings, logs)
            results.append(result)
            print(table([result]).splitlines()[-1 - len(result.notes) - len(result.problems)])
    elapsed = time.monotonic() - started
    print(f"\n{table(results)}\n\n{len(results)} faults in {elapsed:.0f} s")
    write_json(args.json, settings, results, elapsed)
    print(f"JSON: {args.json}")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
