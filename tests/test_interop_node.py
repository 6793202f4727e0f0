"""pgworker beside the real Node graphile-worker 0.17.3 on one schema.

Drives the scripts in tests/interop/node (see its README): jobs made on one side run
on the other, a schema migrated by either side is accepted by the other, and a mixed
fleet runs every job exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from pgworker import App, Recovery
from pgworker.context import JobContext
from pgworker.job import Job
from pgworker.migrate import RACE_FIX_MARKER, MigrationOutcome

NODE_DIR = Path(__file__).parent / "interop" / "node"
_node = shutil.which("node")
if _node is None or shutil.which("npm") is None:
    pytest.skip("node and npm are needed for the Node interop tests", allow_module_level=True)
NODE: str = _node
if not (NODE_DIR / "node_modules" / "graphile-worker").is_dir():
    pytest.skip(
        f"graphile-worker is not installed for the interop harness: run `npm ci` in {NODE_DIR}",
        allow_module_level=True,
    )

pytestmark = pytest.mark.interop

Conn = psycopg.Connection[tuple[Any, ...]]

TASK = "say_hello"
QUEUE = "interop_q"
#: (rows, latest, latest breaking) of the migrations ledger as graphile-worker 0.17
#: leaves it, and as pgworker does (plus the Rust port's non-breaking worker registry, 20).
NODE_LEDGER = (19, 19, 19)
LEDGER = (20, 20, 19)


class Hello(msgspec.Struct):
    n: int


# -- helpers --------------------------------------------------------------------------


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(extra or {})
    return env


def run_node(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one harness script to completion; fail the test unless it exits 0."""
    proc = subprocess.run(
        [NODE, script, *args],
        cwd=NODE_DIR,
        env=node_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{script} {' '.join(args[1:])} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


#: What graphile-worker 0.17 says, and then carries on, on a schema at revision 20 (the
#: Rust port's worker registry, which pgworker installs too).
NEWER_REVISION_WARNING = "Database is using Graphile Worker schema revision 20, but"


def assert_quiet(stderr: str) -> None:
    """graphile-worker logged no warning or error, except that the schema has the
    non-breaking revision 20."""
    bad = [
        line
        for line in stderr.splitlines()
        if line.startswith(("graphile-worker error", "graphile-worker warning", "error:"))
        and NEWER_REVISION_WARNING not in line
    ]
    assert not bad, "graphile-worker complained:\n" + "\n".join(bad)


def ledger(db: Conn, schema: str) -> tuple[int, int, int]:
    """(rows, latest id, latest breaking id) of the migrations ledger."""
    row = db.execute(
        sql.SQL(
            "select count(*), max(id), max(id) filter (where breaking) from {}.migrations"
        ).format(sql.Identifier(schema))
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def add_jobs_definition(db: Conn, schema: str) -> str:
    row = db.execute(
        "select pg_get_functiondef(p.oid) from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = %s and p.proname = 'add_jobs'",
        (schema,),
    ).fetchone()
    assert row is not None, f"no add_jobs function in {schema}"
    return str(row[0])


def job_rows(db: Conn, schema: str) -> list[tuple[Any, ...]]:
    """What is left in the jobs table (id, task, attempts, last_error)."""
    return db.execute(
        sql.SQL(
            "select j.id, t.identifier, j.attempts, j.last_error from {s}._private_jobs j "
            "join {s}._private_tasks t on t.id = j.task_id order by j.id"
        ).format(s=sql.Identifier(schema))
    ).fetchall()


def sql_add_job(db: Conn, schema: str, n: int, **named: str) -> int:
    """Add a job the way an SQL trigger would: select "<schema>".add_job(...)."""
    extra = [
        sql.SQL(", {} => {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in named.items()
    ]
    query = sql.SQL("select id from {}.add_job({}, json_build_object('n', {}::int){})").format(
        sql.Identifier(schema), sql.Literal(TASK), sql.Literal(n), sql.Composed(extra)
    )
    row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def node_payloads(stdout: str) -> Counter[int]:
    lines = json_lines(stdout)
    assert all(line["task"] == TASK for line in lines), lines
    return Counter(line["payload"]["n"] for line in lines)


def node_run_once_until_idle(database_url: str, schema: str, *, runs: int = 5) -> str:
    """Run run_once.js (one slot) until a run finds nothing; return all runs' stdout.

    graphile-worker completes jobs in batches, so runOnce can stop while the next job
    of a named queue waits for its queue to unlock (seen even with concurrency 1);
    the next run picks it up. Every run must exit 0 without a warning or error.
    """
    output = ""
    for _ in range(runs):
        proc = run_node("run_once.js", database_url, schema, TASK, env={"INTEROP_CONCURRENCY": "1"})
        assert_quiet(proc.stderr)
        if not proc.stdout.strip():
            return output
        output += proc.stdout
    raise AssertionError(f"run_once.js still found jobs after {runs} runs:\n{output}")


# -- Node makes the jobs, pgworker runs them ------------------------------------------


def test_node_schema_and_jobs_run_on_pgworker(
    database_url: str, schema: str, make_app: Callable[..., App], db: Conn
) -> None:
    assert json_lines(run_node("migrate.js", database_url, schema).stdout) == [
        {"migrated": True, "schema": schema}
    ]
    run_node("add_jobs.js", database_url, schema, TASK, "20")
    run_node("add_jobs.js", database_url, schema, TASK, "5", QUEUE)
    assert ledger(db, schema) == NODE_LEDGER
    # graphile-worker 0.17.3 ships add_jobs without the fix for graphile/worker#580.
    assert RACE_FIX_MARKER not in add_jobs_definition(db, schema)

    app = make_app()
    ran: list[tuple[str | None, int]] = []

    @app.task(TASK)
    def say_hello(payload: Hello, ctx: JobContext) -> None:
        ran.append((ctx.job.queue_name, payload.n))

    with app:
        assert app.migrate() is MigrationOutcome.UPGRADED
        assert app.migrate() is MigrationOutcome.CURRENT
    # pgworker accepted Node's ledger, added the worker registry and its race fix.
    assert ledger(db, schema) == LEDGER
    assert RACE_FIX_MARKER in add_jobs_definition(db, schema)

    app.run_once()
    expected = Counter({(None, n): 1 for n in range(20)} | {(QUEUE, n): 1 for n in range(5)})
    assert Counter(ran) == expected
    assert job_rows(db, schema) == []

    # Node's addJob still works against pgworker's replaced add_job, and Node's own
    # migration check still accepts the schema.
    run_node("add_jobs.js", database_url, schema, TASK, "3", QUEUE)
    ran.clear()
    app.run_once()
    assert Counter(ran) == Counter({(QUEUE, n): 1 for n in range(3)})
    assert job_rows(db, schema) == []
    assert ledger(db, schema) == LEDGER


# -- pgworker makes the jobs, Node runs them ------------------------------------------


def test_pgworker_schema_and_jobs_run_on_node(
    database_url: str, schema: str, make_app: Callable[..., App], db: Conn
) -> None:
    app = make_app()

    @app.task(TASK)
    def say_hello(payload: Hello) -> None:
        raise AssertionError("this test runs the jobs on Node")

    past = datetime.now(UTC) - timedelta(hours=1)
    jobs: list[Job] = []
    with app:
        assert app.migrate() is MigrationOutcome.INSTALLED
        for n in range(10):
            jobs.append(say_hello.defer(Hello(n=n)))
        for n in range(10, 14):
            jobs.append(say_hello.defer(Hello(n=n), queue=QUEUE))
        for n in range(14, 17):
            jobs.append(say_hello.defer({"n": n}, priority=-5 + n % 3))
        for n in range(17, 20):
            jobs.append(say_hello.defer(Hello(n=n), run_at=past + timedelta(seconds=n)))
        for n in range(20, 24):
            jobs.append(app.defer(TASK, {"n": n}))
        jobs.append(app.defer(TASK, {"n": 24}, queue=QUEUE, priority=3))
        jobs.append(app.defer(TASK, {"n": 25}, queue=QUEUE, run_at=past))
        jobs.append(app.defer(TASK, {"n": 26}, priority=1, run_at=past - timedelta(minutes=1)))
    assert ledger(db, schema) == LEDGER

    # One slot, so graphile-worker takes the jobs one at a time, in its own order.
    stdout = node_run_once_until_idle(database_url, schema)
    lines = json_lines(stdout)
    assert node_payloads(stdout) == Counter(range(27))
    # Node reports the ids pgworker's defer returned, with the payloads deferred.
    assert {line["job_id"]: line["payload"] for line in lines} == {
        str(job.id): {"n": n} for n, job in enumerate(jobs)
    }
    # Priority, run_at and queue written by pgworker mean the same to Node: it fetches
    # by (priority, run_at). Only within each kind, though: graphile-worker completes
    # jobs in batches, so the next job of a named queue waits for its queue to unlock
    # while later jobs without a queue go first (the same happens with Node's own jobs).
    node_order = [int(line["job_id"]) for line in lines]
    for in_queue in (False, True):
        kind = sorted(
            (job for job in jobs if (job.queue_name == QUEUE) is in_queue),
            key=lambda j: (j.priority, j.run_at),
        )
        expected = [job.id for job in kind]
        ids = set(expected)
        assert [i for i in node_order if i in ids] == expected, (in_queue, node_order)

    assert job_rows(db, schema) == []
    # Node's migration step left pgworker's ledger alone.
    assert ledger(db, schema) == LEDGER


# -- jobs added in SQL ----------------------------------------------------------------


def test_sql_add_job_runs_on_both(
    database_url: str, schema: str, make_app: Callable[..., App], db: Conn
) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(TASK)
    def say_hello(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    with app:
        app.migrate()

    # A keyed job replaced before it ran: only the second payload exists.
    first = sql_add_job(db, schema, 1, job_key="k")
    second = sql_add_job(db, schema, 2, job_key="k")
    assert first == second
    sql_add_job(db, schema, 3, queue_name=QUEUE)
    assert node_payloads(node_run_once_until_idle(database_url, schema)) == Counter([2, 3])
    assert job_rows(db, schema) == []

    sql_add_job(db, schema, 4, job_key="k")
    sql_add_job(db, schema, 5, queue_name=QUEUE, priority="-1")
    app.run_once()
    assert sorted(ran) == [4, 5]
    assert job_rows(db, schema) == []


# -- a mixed fleet --------------------------------------------------------------------


class NodeWorker:
    """run_worker.js in the background, its output collected by reader threads."""

    def __init__(self, database_url: str, schema: str, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [NODE, "run_worker.js", database_url, schema, str(seconds), TASK],
            cwd=NODE_DIR,
            env=node_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            if "looking for jobs" in line:
                self.ready.set()

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        """Kill the worker if it still runs; close its pipes once the readers are done."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def test_mixed_fleet_runs_each_job_once(
    database_url: str, schema: str, make_app: Callable[..., App], db: Conn
) -> None:
    app = make_app(concurrency=4)
    ran: list[int] = []

    @app.task(TASK)
    def say_hello(payload: dict[str, int]) -> None:
        time.sleep(0.005)  # leave Node a share of the work
        ran.append(payload["n"])

    with app:
        # Migrate on both sides before the Node worker listens: a breaking-migration
        # notification on the shared worker:migrate channel would stop it.
        assert app.migrate() is MigrationOutcome.INSTALLED
        run_node("migrate.js", database_url, schema)
        handle = app.start()
        node = NodeWorker(database_url, schema, seconds=6)
        adder: subprocess.Popen[str] | None = None
        try:
            assert node.ready.wait(20), "Node worker never started:\n" + "".join(node.stderr)
            adder = subprocess.Popen(
                [NODE, "add_jobs.js", database_url, schema, TASK, "100"],
                cwd=NODE_DIR,
                env=node_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(1000, 1100):
                say_hello.defer({"n": n}, queue=QUEUE if n % 10 == 0 else None)
            out, err = adder.communicate(timeout=60)
            assert adder.returncode == 0, err
            assert json_lines(out) == [{"added": 100}]

            deadline = time.monotonic() + 20
            while job_rows(db, schema) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert job_rows(db, schema) == [], "".join(node.stderr)
            code = node.wait(timeout=30)
        finally:
            if adder is not None and adder.poll() is None:
                adder.kill()
                adder.wait()
            node.kill()
            handle.stop(timeout=10)

    assert code == 0, "Node worker failed:\n" + "".join(node.stderr)
    assert_quiet("".join(node.stderr))
    assert handle.worker.exit_reason is None
    on_node = node_payloads("".join(node.stdout))
    on_pgworker = Counter(ran)
    total = on_node + on_pgworker
    assert total == Counter([*range(100), *range(1000, 1100)]), {
        "twice": sorted(n for n, c in total.items() if c > 1),
        "missing": sorted((set(range(100)) | set(range(1000, 1100))) - set(total)),
    }
    assert on_node, "Node ran none of the jobs:\n" + "".join(node.stderr)
    assert on_pgworker, "pgworker ran none of the jobs"


def test_a_long_node_job_is_never_swept(
    database_url: str, schema: str, make_app: Callable[..., App], db: Conn
) -> None:
    """Node workers don't heartbeat: pgworker's sweep leaves their locks alone long past
    its own stale threshold (1 s here), and Node runs on the schema pgworker migrated
    (revision 20, the worker registry)."""
    fast = Recovery(heartbeat_interval=0.2, stale_after=1.0, sweep_interval=0.2)
    app = make_app(recovery=fast)
    ran: list[dict[str, Any]] = []

    @app.task(TASK)
    def say_hello(payload: dict[str, Any]) -> None:
        ran.append(payload)

    def node_lines() -> list[dict[str, Any]]:
        return json_lines("".join(node.stdout))

    with app:
        assert app.migrate() is MigrationOutcome.INSTALLED
        job = app.defer(TASK, {"n": 1, "sleep_ms": 4000})
        node = NodeWorker(database_url, schema, seconds=6)
        try:
            deadline = time.monotonic() + 20
            while not node_lines() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert node_lines() == [{"task": TASK, "event": "start", "job_id": str(job.id)}], (
                "".join(node.stderr)
            )
            handle = app.start()  # sweeps every 0.2 s while Node's job runs for 4 s
            try:
                deadline = time.monotonic() + 15
                while len(node_lines()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                sweeps = handle.worker.sweeper.sweeps
            finally:
                handle.stop()
            code = node.wait(timeout=30)
        finally:
            node.kill()

    assert code == 0, "".join(node.stderr)
    assert_quiet("".join(node.stderr))
    assert node_lines()[1:] == [
        {"task": TASK, "payload": {"n": 1, "sleep_ms": 4000}, "job_id": str(job.id)}
    ]
    assert sweeps >= 10
    assert ran == []
    assert job_rows(db, schema) == []
