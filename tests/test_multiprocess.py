"""Several ``pgworker run`` processes on one schema: every job runs exactly once, and a
named queue runs one job at a time, in (priority, run_at) order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from pgworker import App, JobSpec
from pgworker.store import NewJob

TESTS_DIR = Path(__file__).resolve().parent
APP_TARGET = "multiprocess_app:app"  # tests/multiprocess_app.py, run from tests/
RUNS_TABLE_VARIABLE = "PGWORKER_TEST_RUNS_TABLE"

PROCESSES = 4
CONCURRENCY = 4
JOBS = 2000
QUEUES = ("alpha", "beta")
QUEUED_PER_QUEUE = 150
#: Bounds on the waits: the queue must empty within DRAIN_TIMEOUT, and the workers exit
#: within STOP_TIMEOUT of SIGTERM.
DRAIN_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: The `pgworker` console script of this interpreter's environment.
_SCRIPT = Path(sys.executable).parent / "pgworker"
PGWORKER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "pgworker.cli"]


@dataclass(frozen=True)
class Run:
    job_id: int
    queue_name: str | None
    started_ns: int
    ended_ns: int
    n: int
    worker_id: str


@pytest.fixture
def runs_table(database_url: str, schema: str) -> Iterator[str]:
    """A plain table ``<schema>_runs`` in the default schema, dropped afterwards."""
    name = f"{schema}_runs"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {} (job_id bigint not null, queue_name text, "
                "started_ns bigint not null, ended_ns bigint not null, n int not null, "
                "worker_id text not null)"
            ).format(sql.Identifier(name))
        )
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))


def enqueue(database_url: str, schema: str) -> None:
    """Add JOBS jobs with payload {"n": i}: QUEUED_PER_QUEUE in each named queue, all with
    mixed priorities and run_at times in the past (so all are runnable at once, and a
    queue's order is exactly (priority, run_at)); ties on run_at may run either way."""
    rng = random.Random(580)
    now = datetime.now(UTC)
    past = [now - timedelta(minutes=m) for m in range(1, 21)]
    queues = [q for q in QUEUES for _ in range(QUEUED_PER_QUEUE)]
    queues += [None] * (JOBS - len(queues))
    rng.shuffle(queues)
    jobs = [
        NewJob(
            "record",
            msgspec.json.encode({"n": n}).decode(),
            JobSpec(queue=queue, priority=rng.choice((-1, 0, 0, 1)), run_at=rng.choice(past)),
        )
        for n, queue in enumerate(queues)
    ]
    with App(database_url=database_url, schema=schema) as app:
        app.migrate()
        added = app.store.add_jobs(jobs, preserve_run_at=False)
    assert len(added) == JOBS


def jobs_by_queue(
    conn: psycopg.Connection[Any], schema: str
) -> dict[str, dict[int, tuple[int, datetime]]]:
    """Each named queue's jobs with the key they must run in: (priority, run_at). Jobs
    with equal keys may run in either order (graphile-worker's fetch order)."""
    rows = conn.execute(
        sql.SQL(
            "select q.queue_name, j.id, j.priority, j.run_at from {s}._private_jobs as j "
            "join {s}._private_job_queues as q on q.id = j.job_queue_id"
        ).format(s=sql.Identifier(schema))
    ).fetchall()
    keys: dict[str, dict[int, tuple[int, datetime]]] = defaultdict(dict)
    for queue_name, job_id, priority, run_at in rows:
        keys[queue_name][job_id] = (priority, run_at)
    return keys


def remaining(conn: psycopg.Connection[Any], schema: str) -> int:
    query = sql.SQL("select count(*) from {}._private_jobs").format(sql.Identifier(schema))
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return f"--- {path.name} ---\n" + "\n".join(text[-lines:])


def start_workers(
    database_url: str, schema: str, runs_table: str, logs: Path
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    env = dict(os.environ, **{RUNS_TABLE_VARIABLE: runs_table})
    env.pop("DATABASE_URL", None)
    workers = []
    for i in range(PROCESSES):
        log = logs / f"worker-{i}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    *PGWORKER,
                    "--log-level",
                    "warning",
                    "run",
                    APP_TARGET,
                    "--concurrency",
                    str(CONCURRENCY),
                    "--database-url",
                    database_url,
                    "--schema",
                    schema,
                ],
                cwd=TESTS_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        workers.append((process, log))
    return workers


@pytest.mark.slow
@pytest.mark.gw("Q-01")
def test_multiprocess_runs_each_job_once_and_queues_in_order(
    database_url: str, schema: str, runs_table: str, tmp_path: Path
) -> None:
    enqueue(database_url, schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        expected_order = jobs_by_queue(conn, schema)
    assert sorted(expected_order) == sorted(QUEUES)

    workers = start_workers(database_url, schema, runs_table, tmp_path)
    logs = lambda: "\n".join(tail(log) for _, log in workers)  # noqa: E731
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while (left := remaining(conn, schema)) > 0:
                exited = [p.returncode for p, _ in workers if p.poll() is not None]
                assert not exited, f"a worker exited early ({exited}), {left} jobs left\n{logs()}"
                assert time.monotonic() < deadline, (
                    f"{left} jobs left after {DRAIN_TIMEOUT:.0f} s\n{logs()}"
                )
                time.sleep(0.1)
        for process, _ in workers:
            process.send_signal(signal.SIGTERM)
        codes = []
        for process, _ in workers:
            try:
                codes.append(process.wait(STOP_TIMEOUT))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert codes == [0] * PROCESSES, f"exit codes {codes}\n{logs()}"

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("select job_id, queue_name, started_ns, ended_ns, n, worker_id from {}").format(
                sql.Identifier(runs_table)
            )
        ).fetchall()
    runs = [Run(*row) for row in rows]

    # Every payload ran exactly once.
    counts = Counter(run.n for run in runs)
    duplicated = {n: c for n, c in counts.items() if c > 1}
    missing = sorted(set(range(JOBS)) - set(counts))
    assert not duplicated, f"ran more than once (n: runs): {duplicated}"
    assert not missing, f"never ran: {missing[:20]} ({len(missing)} in all)"
    assert len({run.worker_id for run in runs}) >= 2, "the jobs did not spread over processes"

    # Per named queue: one run at a time, in (priority, run_at) order.
    for queue_name in QUEUES:
        queue_runs = sorted(
            (run for run in runs if run.queue_name == queue_name), key=lambda r: r.started_ns
        )
        overlaps = [
            (a.job_id, b.job_id, (a.ended_ns - b.started_ns) / 1e6)
            for a, b in pairwise(queue_runs)
            if a.ended_ns > b.started_ns
        ]
        assert not overlaps, f"queue {queue_name}: overlapping runs (a, b, overlap ms): {overlaps}"
        ran = [run.job_id for run in queue_runs]
        keys = expected_order[queue_name]
        assert sorted(ran) == sorted(keys), f"queue {queue_name}: not every job ran"
        ran_keys = [keys[job_id] for job_id in ran]
        first_difference = next((i for i, (a, b) in enumerate(pairwise(ran_keys)) if a > b), None)
        assert first_difference is None, (
            f"queue {queue_name}: runs out of (priority, run_at) order at position "
            f"{first_difference}: {ran_keys[first_difference or 0 :][:2]}"
        )
