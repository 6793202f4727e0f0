"""Crash recovery: the worker registry, the dead-worker sweep, the recovery cap, never
twice at once after a forced stop, SIGKILL chaos, and ``pgworker workers``.

Worker processes are ``pgworker run`` subprocesses (tests/processes.py); most tests use
short recovery settings so that they take seconds, one uses the defaults. Every wait is
bounded, and all traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from processes import WorkerProcess, wait_for

from pgworker import App, JobContext, RawJob, Recovery
from pgworker.cli import cli
from pgworker.hooks import Hooks
from pgworker.recovery import Sweeper

Conn = psycopg.Connection[tuple[Any, ...]]

#: Stale after 1 s, heartbeats every 0.2 s, sweeps every 0.2 s.
FAST = Recovery(heartbeat_interval=0.2, stale_after=1.0, sweep_interval=0.2)
FAST_ENV = "0.2,1.0,0.2"


def registry(db: Conn, schema: str) -> list[tuple[str, float, Any]]:
    """(id, heartbeat age in seconds, metadata) of every registered worker."""
    return db.execute(
        f"""select id, extract(epoch from now() - last_heartbeat_at)::float8, metadata
        from "{schema}"._private_workers order by started_at"""
    ).fetchall()


def job_row(db: Conn, schema: str, job_id: int) -> dict[str, Any] | None:
    cur = db.execute(
        f"""select attempts, max_attempts, locked_by, last_error, queue_name
        from "{schema}".jobs where id = %s""",
        [job_id],
    )
    row = cur.fetchone()
    names = [c.name for c in cur.description or []]
    return None if row is None else dict(zip(names, row, strict=True))


def held_by(
    db: Conn,
    schema: str,
    app: App,
    owner: str,
    *,
    heartbeat_age: float | None,
    metadata: dict[str, Any] | None = None,
    queue: str | None = None,
) -> int:
    """A job of a task no test worker runs, locked by ``owner`` (with its queue), as a
    claim would leave it; ``owner`` is registered with a heartbeat ``heartbeat_age``
    seconds old, or not at all (None, like a Node worker)."""
    job = app.defer("elsewhere", {}, queue=queue)
    db.execute(
        f"""update "{schema}"._private_jobs set locked_by = %s,
        locked_at = now() - interval '10 minutes', attempts = 1 where id = %s""",
        [owner, job.id],
    )
    if queue is not None:
        db.execute(
            f"""update "{schema}"._private_job_queues set locked_by = %s, locked_at = now()
            where queue_name = %s""",
            [owner, queue],
        )
    if heartbeat_age is not None:
        db.execute(
            f"""insert into "{schema}"._private_workers (id, last_heartbeat_at, metadata)
            values (%s, now() - %s * interval '1 second', %s::jsonb)""",
            [owner, heartbeat_age, None if metadata is None else json.dumps(metadata)],
        )
    return job.id


@pytest.mark.gw("RS-03", "RS-04", "RS-06")
def test_registry_and_what_a_sweep_takes_back(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(recovery=FAST)

    @app.task("here")
    def here(payload: dict[str, Any]) -> None:
        pass

    with app:
        handle = app.start()
        try:
            # A live worker's row: a fresh heartbeat and metadata a Rust sweeper can read.
            [(worker_id, age, metadata)] = registry(db, schema)
            assert worker_id == handle.worker_id
            assert age < 1.0
            assert metadata["runtime"] == "pgworker"
            assert metadata["tasks"] == ["here"]
            assert metadata["pid"] == os.getpid()
            assert metadata["hostname"] == socket.gethostname()
            assert metadata["version"]

            ours = {"runtime": "pgworker"}
            dead = held_by(db, schema, app, "pgworker-dead", heartbeat_age=5, metadata=ours)
            queued = held_by(
                db, schema, app, "pgworker-dead2", heartbeat_age=5, metadata=ours, queue="q"
            )
            # Rust rows keep the Rust crate's 5 minutes: 2 minutes stale is alive.
            rust_alive = held_by(db, schema, app, "graphile_worker_aa", heartbeat_age=120)
            rust_dead = held_by(db, schema, app, "graphile_worker_bb", heartbeat_age=400)
            # A Node worker never registers: the 4-hour rule is its only sweeper.
            node = held_by(db, schema, app, "pool-node", heartbeat_age=None)

            sweeper = handle.worker.sweeper
            wait_for(
                lambda: (job_row(db, schema, dead) or {}).get("locked_by") is None,
                5,
                "the dead worker's job to come back",
            )
            swept = sweeper.sweeps
            wait_for(lambda: sweeper.sweeps >= swept + 3, 5, "three more sweeps")
        finally:
            handle.stop()

    for job_id, owner in ((dead, "pgworker-dead"), (queued, "pgworker-dead2")):
        row = job_row(db, schema, job_id)
        assert row is not None
        assert row["locked_by"] is None
        assert row["attempts"] == 0  # refunded
        assert row["last_error"] == (
            f"Recovered from dead worker {owner} (no heartbeat); recovery 1 in a row"
        )
    queue_lock = db.execute(
        f'select locked_by from "{schema}"._private_job_queues where queue_name = %s', ["q"]
    ).fetchone()
    assert queue_lock == (None,)
    assert (job_row(db, schema, rust_alive) or {})["locked_by"] == "graphile_worker_aa"
    assert (job_row(db, schema, rust_dead) or {})["locked_by"] is None
    assert (job_row(db, schema, node) or {})["locked_by"] == "pool-node"
    # Dead rows are forgotten, the live Rust row stays, and a clean stop deregisters.
    assert [row[0] for row in registry(db, schema)] == ["graphile_worker_aa"]


def test_forced_stop_never_lets_another_worker_start_a_running_job(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    events: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def make(**options: Any) -> App:
        app = make_app(recovery=FAST, **options)

        @app.task("slow")
        def slow(payload: dict[str, Any], ctx: JobContext) -> None:
            with lock:
                events.append((ctx.worker_id, "start", time.monotonic()))
            time.sleep(2.0)
            with lock:
                events.append((ctx.worker_id, "end", time.monotonic()))

        return app

    first, second = make(interrupted_retry_delay=0), make()
    with first, second:
        first.migrate()
        job = first.defer("slow", {})
        handle = first.start()
        wait_for(lambda: events, 5, "the job to start")
        stopping = time.monotonic()
        handle.stop(force=True)
        assert time.monotonic() - stopping < 1.0  # the forced stop did not wait
        # Still running: the first worker keeps its registry row fresh for it.
        time.sleep(3 * FAST.heartbeat_interval)
        [(still_registered, age, _)] = registry(db, schema)
        assert still_registered == handle.worker_id
        assert age < 2 * FAST.heartbeat_interval
        other = second.start()
        try:
            wait_for(lambda: len(events) >= 2, 5, "the first run to return")
            time.sleep(1.0)  # ten of the second worker's polls
        finally:
            other.stop()
        assert handle.worker.wait_finished(5)

    # One run: the job stayed locked while its code ran, then its outcome was recorded.
    assert [(who, what) for who, what, _ in events] == [
        (handle.worker_id, "start"),
        (handle.worker_id, "end"),
    ]
    assert job_row(db, schema, job.id) is None
    assert registry(db, schema) == []


def test_a_job_that_kills_its_worker_is_failed_after_the_recovery_cap(
    spawn_worker: Callable[..., WorkerProcess],
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
) -> None:
    # A cap of 1: two deaths in a row, each a worker start and a stale wait, not four.
    capped = Recovery(
        heartbeat_interval=FAST.heartbeat_interval,
        stale_after=FAST.stale_after,
        sweep_interval=FAST.sweep_interval,
        max_recoveries=1,
    )
    sweeping = make_app(recovery=capped)

    @sweeping.task("unrelated")
    def unrelated(payload: dict[str, Any]) -> None:
        pass

    with sweeping:
        handle = sweeping.start()
        try:
            job = sweeping.defer("doomed", {})
            deaths = 0
            for _ in range(capped.max_recoveries + 1):
                doomed = spawn_worker(FAULT_RECOVERY=FAST_ENV)
                assert doomed.wait_exit(20) == -signal.SIGKILL, doomed.log()
                deaths += 1
                wait_for(
                    lambda: (job_row(db, schema, job.id) or {}).get("locked_by") is None,
                    10,
                    "the sweep to take the job back",
                )
            row = job_row(db, schema, job.id)
            assert row is not None
            assert row["attempts"] == row["max_attempts"], row
            assert row["last_error"].startswith(
                f"Failed for good: its worker died while running it {deaths} times in a row"
            ), row
            # Nobody runs it again: a new worker lives.
            survivor = spawn_worker(FAULT_RECOVERY=FAST_ENV)
            survivor.worker_id()
            time.sleep(1.0)
            assert survivor.running()
            assert len(doomed.events(job.id, "started")) == deaths
        finally:
            handle.stop()


@pytest.mark.gw("RS-03", "RS-08")
def test_workers_command_lists_live_stale_and_unregistered_workers(
    make_app: Callable[..., App], db: Conn, schema: str, database_url: str
) -> None:
    # This worker's own sweep would take the stale row: it waits 10 minutes to.
    patient = Recovery(heartbeat_interval=1.0, stale_after=600.0, sweep_interval=60.0)
    app = make_app(recovery=patient)

    @app.task("here")
    def here(payload: dict[str, Any]) -> None:
        pass

    with app:
        stopped = app.start()
        stopped_id = stopped.worker_id
        stopped.stop()
        handle = app.start()
        try:
            meta = {"runtime": "pgworker", "hostname": "elsewhere", "pid": 4242, "tasks": []}
            held_by(db, schema, app, "pgworker-stale", heartbeat_age=100, metadata=meta)
            held_by(db, schema, app, "pool-node", heartbeat_age=None)
            app.defer("nobody_runs_this", {})
            runner = CliRunner()
            args = ["workers", "--database-url", database_url, "--schema", schema]
            text = runner.invoke(cli, args)
            as_json = runner.invoke(cli, [*args, "--json"])
        finally:
            handle.stop()

    assert text.exit_code == 0, text.output
    lines = {line.split()[0]: line.split() for line in text.output.splitlines() if line.strip()}
    assert lines[handle.worker_id][1:3] == ["pgworker", "live"]
    assert lines["pgworker-stale"][1:3] == ["pgworker", "stale"]
    assert lines["pgworker-stale"][-1] == "elsewhere:4242"
    assert lines["pool-node"][1:3] == ["unregistered", "unregistered"]
    assert stopped_id not in text.output
    assert "nobody_runs_this: 1 job(s)" in text.output
    assert "Node graphile-worker workers" in text.output

    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    by_id = {w["worker_id"]: w for w in document["workers"]}
    assert set(by_id) == {handle.worker_id, "pgworker-stale", "pool-node"}
    assert by_id[handle.worker_id]["state"] == "live"
    assert by_id[handle.worker_id]["metadata"]["tasks"] == ["here"]
    assert by_id["pgworker-stale"]["state"] == "stale"
    assert by_id["pgworker-stale"]["jobs_held"] == 1
    assert by_id["pool-node"]["state"] == "unregistered"
    assert by_id["pool-node"]["jobs_held"] == 1
    assert document["unserved_tasks"] == {"nobody_runs_this": 1}


@pytest.mark.slow
def test_sigkill_chaos_loses_no_job_and_repeats_only_killed_runs(
    spawn_worker: Callable[..., WorkerProcess],
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
) -> None:
    """3 worker processes on 5,000 jobs; one is SIGKILLed every ~2 s for 30 s and a
    replacement started. Every job completes; a job runs more than once only when the
    earlier runs were in killed processes."""
    table = f"{schema}_runs"
    db.execute(
        f"""create table "{table}" (id bigserial primary key, job_id bigint not null,
        worker_id text not null, ended timestamptz)"""
    )
    try:
        client = make_app()
        with client:
            client.migrate()
            jobs = client.defer_raw(RawJob("chaos", {"n": n}) for n in range(5000))
        env = {"CHAOS_RUNS_TABLE": table, "CHAOS_RECOVERY": "0.5,3,0.5"}
        workers = [spawn_worker("chaos_app:app", **env) for _ in range(3)]
        seed = random.randrange(1 << 30)
        chooser = random.Random(seed)
        killed: set[str] = set()
        chaos_ends = time.monotonic() + 30
        while time.monotonic() < chaos_ends:
            time.sleep(chooser.uniform(1.5, 2.5))
            victim = chooser.choice(workers)
            killed.add(victim.worker_id())
            victim.proc.kill()
            victim.wait_exit(5)
            workers.remove(victim)
            workers.append(spawn_worker("chaos_app:app", **env))
        left = f'select count(*) from "{schema}"._private_jobs'
        wait_for(
            lambda: db.execute(left).fetchone() == (0,),
            120,
            "every job to complete",
            detail=lambda: f"seed {seed}; {db.execute(left).fetchone()} left",
            interval=0.5,
        )
        runs: dict[int, list[tuple[str, bool]]] = defaultdict(list)
        for job_id, worker_id, ended in db.execute(
            f'select job_id, worker_id, ended is not null from "{table}" order by id'
        ):
            runs[job_id].append((worker_id, ended))
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait_exit(15) == 0, worker.log()
    finally:
        db.execute(f'drop table if exists "{table}"')

    assert len(killed) >= 12, seed  # one every ~2 s for 30 s
    assert set(runs) == {job.id for job in jobs}, seed
    repeated = 0
    for job_id, job_runs in runs.items():
        assert any(ended for _, ended in job_runs), (seed, job_id, job_runs)
        in_live_workers = [who for who, _ in job_runs if who not in killed]
        assert len(in_live_workers) <= 1, (seed, job_id, job_runs)
        repeated += len(job_runs) > 1
    assert repeated > 0, "no job was running in a killed worker: the test proves nothing"
    assert registry(db, schema) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_default_settings_recover_within_a_minute_and_spare_a_live_long_job(
    spawn_worker: Callable[..., WorkerProcess],
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
) -> None:
    """Default recovery: a SIGKILLed worker's job starts again within 60 s plus one sweep
    interval, while a 3-minute job on a live worker in the same database runs once."""
    client = make_app().open()
    client.migrate()
    live = spawn_worker(FAULT_CONCURRENCY="1")
    long_job = client.defer("sleepy", {"seconds": 180})
    live_id = wait_for(
        lambda: live.running() and live.marker(long_job.id, 1, "started"), 15, "the long job"
    )
    doomed = spawn_worker(FAULT_CONCURRENCY="1")
    short = client.defer("sleepy", {"seconds": 600, "retry_seconds": 0.1})
    dead_id = wait_for(
        lambda: doomed.running() and doomed.marker(short.id, 1, "started"), 15, "the short job"
    )
    doomed.proc.kill()
    killed_at = time.monotonic()
    rescuer = spawn_worker(FAULT_CONCURRENCY="1")
    limit = 60 + Recovery().sweep_interval
    wait_for(
        lambda: rescuer.running() and len(rescuer.events(short.id, "done")) == 1,
        limit + 5,
        "the killed worker's job to run again",
        detail=lambda: live.log() + rescuer.log(),
        interval=0.2,
    )
    assert time.monotonic() - killed_at < limit
    logs = live.log_path.read_text() + rescuer.log_path.read_text()
    assert f"Worker {dead_id} is dead" in logs  # a sweep ran while the long job ran

    wait_for(
        lambda: live.running() and live.events(long_job.id, "done"),
        200,
        "the long job to finish",
        interval=1.0,
    )
    assert live.events(long_job.id, "started") == [live_id]
    wait_for(lambda: job_row(db, schema, long_job.id) is None, 10, "the long job's completion")
    client.close()


def test_jobs_no_registered_worker_runs_are_reported(
    make_app: Callable[..., App], db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(recovery=FAST)

    @app.task("here")
    def here(payload: dict[str, Any]) -> None:
        pass

    with app:
        handle = app.start()
        try:
            app.defer("nobody_runs_this", {})
            app.defer("nobody_runs_this", {})
            handle.worker.sweeper.reset_stale_locks()
        finally:
            handle.stop()
    assert "Jobs wait for tasks that no registered worker runs" in caplog.text
    assert "nobody_runs_this (2)" in caplog.text
    assert "here (" not in caplog.text


def _stale_worker_with_a_job(
    opened: App, db: psycopg.Connection[Any], schema: str, worker: str
) -> int:
    """A registry row for ``worker`` silent for a minute, holding one job."""
    job = opened.defer("elsewhere", {"of": worker})
    db.execute(
        f"""update "{schema}"._private_jobs set locked_by = %s,
        locked_at = now() - interval '1 minute', attempts = 1 where id = %s""",
        [worker, job.id],
    )
    db.execute(
        f"""insert into "{schema}"._private_workers (id, last_heartbeat_at, metadata)
        values (%s, now() - interval '1 minute', '{{"runtime": "pgworker"}}')""",
        [worker],
    )
    return job.id


def _locked_by(db: psycopg.Connection[Any], schema: str, job_id: int) -> str | None:
    row = db.execute(f'select locked_by from "{schema}".jobs where id = %s', [job_id]).fetchone()
    assert row is not None
    return row[0]


FAST_SWEEP = Recovery(heartbeat_interval=0.2, stale_after=1.0, sweep_interval=0.5)


def test_a_sweeper_never_takes_its_own_worker_for_dead(
    opened: App, db: psycopg.Connection[Any], schema: str, database_url: str
) -> None:
    """After an outage the sweeping worker's own row is as old as anyone's: its running
    jobs must stay with it."""
    mine = _stale_worker_with_a_job(opened, db, schema, "pgworker-me")
    theirs = _stale_worker_with_a_job(opened, db, schema, "pgworker-gone")
    sweeper = Sweeper(opened.store, database_url, FAST_SWEEP, Hooks(), "pgworker-me")
    try:
        sweeper.sweep()
    finally:
        sweeper.close()
    assert _locked_by(db, schema, mine) == "pgworker-me"
    assert _locked_by(db, schema, theirs) is None


def test_a_sweeper_that_lost_the_database_waits_before_sweeping(
    opened: App, db: psycopg.Connection[Any], schema: str, database_url: str
) -> None:
    """Every live worker's heartbeat was silenced by the same outage: a sweeper whose own
    connection just failed gives them stale_after seconds to beat again."""
    theirs = _stale_worker_with_a_job(opened, db, schema, "pgworker-other")
    recovery = Recovery(heartbeat_interval=0.2, stale_after=1.5, sweep_interval=0.5)
    sweeper = Sweeper(opened.store, database_url, recovery, Hooks(), "pgworker-me")
    try:
        sweeper.reset_stale_locks(report_unserved=False)  # opens the sweeper's connection
        pid = sweeper._conn.get().info.backend_pid
        db.execute("select pg_terminate_backend(%s)", [pid])
        sweeper.sweep()  # fails on the dead connection: an outage, as this worker saw it
        assert sweeper.last_failure is not None
        sweeper.sweep()  # the database is back, but the other worker may not have beaten
        assert _locked_by(db, schema, theirs) == "pgworker-other"
        wait_for(
            lambda: (sweeper.seconds_since_failure() or 0) > recovery.stale_after,
            5,
            "the grace after the failure to pass",
        )
        sweeper.sweep()
        assert _locked_by(db, schema, theirs) is None
    finally:
        sweeper.close()
