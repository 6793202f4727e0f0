"""The raw-SQL floor: what pgbench reaches with plain prepared statements on the same
database, the same jobs table and the same concurrency, with no queue library around it.

- claim: each client locks ``batch`` runnable jobs (``FOR UPDATE SKIP LOCKED``, in
  graphile-worker's order, on its index) and marks them locked in one transaction, then
  deletes them in a second one: the least a worker does per job; ``batch`` 1 is the
  one-at-a-time floor, ``batch`` = prefetch the batched one;
- insert: one client inserting ``rows``-row batches (one statement, one transaction each):
  the floor of enqueueing.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from benchmarks.common import BenchError, progress
from benchmarks.db import analyze, connect, drop_schema, remaining_jobs

#: Bound on one pgbench run, so that the benchmark always ends.
PGBENCH_TIMEOUT = 600.0
PGBENCH_CANDIDATES = ("pgbench", "/usr/lib/postgresql/15/bin/pgbench")

CLAIM_SCRIPT = """\
with claimed as (
  update {schema}._private_jobs as jobs
  set attempts = jobs.attempts + 1, locked_by = 'pgbench', locked_at = now()
  where jobs.id = any(array(
    select id from {schema}._private_jobs
    where is_available = true and run_at <= now() and task_id = {task_id}
    order by priority, run_at
    limit {batch}
    for update skip locked
  ))
  returning jobs.id
)
select coalesce(array_agg(id), '{{}}')::text as ids from claimed \\gset
delete from {schema}._private_jobs where id = any(:ids::bigint[]);
"""

INSERT_SCRIPT = """\
insert into {schema}._private_jobs (task_id, payload)
select {task_id}, json_build_object('n', n) from generate_series(1, {rows}) as n;
"""


@dataclass(frozen=True)
class Floor:
    """One pgbench measurement: jobs (or rows) per second and how it was taken."""

    name: str
    clients: int
    batch: int
    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds


def pgbench_executable() -> str:
    for candidate in PGBENCH_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BenchError(
        "pgbench is not installed (Debian: apt-get install postgresql-client): "
        "pass --no-floor to skip the raw-SQL floor"
    )


def run_pgbench(url: str, script: str, clients: int, transactions: int, logs: Path) -> float:
    """Run ``script`` with prepared statements; the seconds the transactions took (pgbench's
    own count over its tps, connection set-up left out)."""
    path = logs / f"pgbench-{time.monotonic_ns()}.sql"
    path.write_text(script)
    argv = [
        pgbench_executable(),
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={clients}",
        f"--jobs={min(clients, 4)}",
        f"--transactions={transactions}",
        f"--file={path}",
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=PGBENCH_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"pgbench exited {done.returncode}:\n{done.stderr[-2000:]}")
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if not processed or not tps:
        raise BenchError(f"pgbench printed no tps:\n{done.stdout[-2000:]}")
    return int(processed.group(1)) / float(tps.group(1))


def prepare(url: str, schema: str) -> int:
    """A pgworker-migrated schema with a ``noop`` task; returns the task's id."""
    from pgworker import App

    with App(database_url=url, schema=schema) as app:
        app.migrate()
        return next(iter(app.store.register_tasks(["noop"])))


def claim_floor(
    url: str, schema: str, jobs: int, batch: int, clients: int, logs: Path, label: str
) -> Floor:
    """Claim and delete ``jobs`` jobs, ``batch`` per claim, with ``clients`` clients."""
    task_id = prepare(url, schema)
    ident = sql.Identifier(schema)
    with connect(url) as conn:
        conn.execute(
            sql.SQL(
                "insert into {}._private_jobs (task_id, payload) "
                "select %s, json_build_object('n', n) from generate_series(1, %s) as n"
            ).format(ident),
            (task_id, jobs),
        )
    analyze(url, schema)
    script = CLAIM_SCRIPT.format(schema=ident.as_string(), task_id=task_id, batch=batch)
    transactions = math.ceil(jobs / (clients * batch))
    seconds = run_pgbench(url, script, clients, transactions, logs)
    with connect(url) as conn:
        left = remaining_jobs(conn, schema)
    floor = Floor(label, clients, batch, jobs - left, seconds)
    progress(
        f"[floor] {label}: {floor.jobs} jobs claimed and deleted, {batch} per claim, "
        f"{clients} clients: {floor.per_second:,.0f} jobs/s"
    )
    return floor


def insert_floor(url: str, schema: str, jobs: int, rows: int, logs: Path) -> Floor:
    """Insert ``jobs`` rows, ``rows`` per statement, from one client."""
    task_id = prepare(url, schema)
    script = INSERT_SCRIPT.format(
        schema=sql.Identifier(schema).as_string(), task_id=task_id, rows=rows
    )
    transactions = max(1, jobs // rows)
    seconds = run_pgbench(url, script, 1, transactions, logs)
    floor = Floor("insert", 1, rows, transactions * rows, seconds)
    progress(f"[floor] insert: {rows}-row inserts, 1 client: {floor.per_second:,.0f} rows/s")
    return floor


def measure_floor(
    url: str, jobs: int, batch: int, clients: int, insert_rows: int, logs: Path, label: str
) -> dict[str, Floor]:
    """The claim floor at ``batch`` and the insert floor, each in a fresh schema."""
    floors: dict[str, Floor] = {}
    for name in ("claim", "insert"):
        schema = f"bench_floor_{time.monotonic_ns() % 10**8}"
        try:
            if name == "claim":
                floors[name] = claim_floor(url, schema, jobs, batch, clients, logs, label)
            else:
                floors[name] = insert_floor(url, schema, jobs, insert_rows, logs)
        finally:
            drop_schema(url, schema)
    return floors
