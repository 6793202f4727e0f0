"""Fault injection: signals, a killed worker, dropped connections and bad payloads.

The signal tests run ``pgworker run fault_app:app`` in a subprocess; the connection
tests run a worker in this process (``app.start()``) and cut its connections with
``pg_terminate_backend``, picking them out by a distinctive ``application_name`` so that
no other backend is ever touched. Every wait is bounded.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import psycopg
import pytest
from processes import WorkerProcess, wait_for
from psycopg.conninfo import make_conninfo

from pgworker import App, WorkerHandle

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

RECOVERED = "Job recovered after worker interruption"
#: Acceptance point 2 of the core issue: a notified job starts within 100 ms.
NOTIFY_LATENCY = 0.1


@pytest.fixture
def client(make_app: Callable[..., App]) -> App:
    """An open app on the test schema, migrated, for deferring jobs (it runs nothing)."""
    app = make_app().open()
    app.migrate()
    return app


def job_rows(db: Conn, schema: str) -> list[dict[str, Any]]:
    cur = db.execute(
        f"""select id, attempts, max_attempts, locked_at, locked_by, last_error,
        run_at > now() as in_future, queue_name
        from "{schema}".jobs order by id"""
    )
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def locked_anything(db: Conn, schema: str) -> list[tuple[Any, ...]]:
    """Every job or queue row still locked (by anyone), to assert there is none."""
    return db.execute(
        f"""select 'job', id::text, locked_by, locked_at from "{schema}"._private_jobs
        where locked_by is not null or locked_at is not null
        union all
        select 'queue', queue_name, locked_by, locked_at from "{schema}"._private_job_queues
        where locked_by is not null or locked_at is not null"""
    ).fetchall()


# -- 1-3: signals and SIGKILL ------------------------------------------------------------


@pytest.mark.gw("SH-02", "SH-08")
def test_sigterm_lets_running_jobs_finish(
    spawn_worker: Callable[..., WorkerProcess], client: App, db: Conn, schema: str
) -> None:
    worker = spawn_worker(FAULT_GRACE="20")
    ids = [client.defer("sleepy", {"seconds": 1.5}).id for _ in range(3)]

    def all_started() -> bool:
        worker.running()
        rows = job_rows(db, schema)
        locked = [r for r in rows if r["locked_at"] is not None]
        return len(locked) == 3 and all(worker.marker(i, 1, "started") for i in ids)

    wait_for(all_started, 15, "3 sleepy jobs to start", detail=worker.log)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait_exit(15)
    elapsed = time.monotonic() - started

    assert code == 0, worker.log()
    assert job_rows(db, schema) == [], worker.log()
    assert all(worker.marker(i, 1, "done") for i in ids)
    assert locked_anything(db, schema) == []
    # The jobs had up to 1.5 s left: the process waited for them, then stopped at once.
    assert elapsed < 10, f"exit took {elapsed:.1f} s"


@pytest.mark.gw("SH-10")
def test_second_signal_gives_running_jobs_back(
    spawn_worker: Callable[..., WorkerProcess], client: App, db: Conn, schema: str
) -> None:
    # A 30 s grace period: only the second signal can explain a prompt exit.
    worker = spawn_worker(FAULT_GRACE="30", FAULT_RETRY_DELAY="30")
    ids = [client.defer("sleepy", {"seconds": 30}).id for _ in range(3)]

    def all_started() -> bool:
        worker.running()
        return all(worker.marker(i, 1, "started") for i in ids)

    wait_for(all_started, 15, "3 sleepy jobs to start", detail=worker.log)
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    worker.wait_exit(5)
    elapsed = time.monotonic() - started

    rows = job_rows(db, schema)
    assert [r["id"] for r in rows] == ids, worker.log()
    for row in rows:
        assert row["locked_at"] is None
        assert row["locked_by"] is None
        assert row["attempts"] == 0, row
        assert row["last_error"] == RECOVERED, row
        assert row["in_future"], row
    assert not any(worker.marker(i, 1, "done") for i in ids)
    assert locked_anything(db, schema) == []
    assert elapsed < 5


@pytest.mark.gw("RS-04")
def test_sigkill_job_is_recovered_by_a_live_workers_sweep(
    spawn_worker: Callable[..., WorkerProcess], client: App, db: Conn, schema: str
) -> None:
    """A killed worker's job and queue lock come back once its heartbeat is stale (here
    1.5 s, swept every 0.3 s), and a live worker runs it: attempt refunded, last_error
    naming the dead worker."""
    fast = {"FAULT_RECOVERY": "0.3,1.5,0.3"}
    doomed = spawn_worker(**fast)
    job = client.defer("sleepy", {"seconds": 30, "retry_seconds": 0.2}, queue="fault-q")
    dead_id = wait_for(
        lambda: doomed.running() and doomed.marker(job.id, 1, "started"),
        15,
        "the sleepy job to start",
        detail=doomed.log,
    )
    doomed.proc.kill()  # SIGKILL: no handler, no shutdown, nothing given back
    assert doomed.wait_exit(5) == -signal.SIGKILL
    killed_at = time.monotonic()

    survivor = spawn_worker(**fast)
    survivor_id = survivor.worker_id()
    # While the dead worker's heartbeat is fresh, its lock stands.
    [row] = job_rows(db, schema)
    assert row["locked_by"] == dead_id
    assert row["attempts"] == 1

    ran_by = wait_for(
        lambda: survivor.running() and survivor.marker(job.id, 1, "done"),
        15,
        "the survivor to run the recovered job",
        detail=survivor.log,
    )
    assert ran_by == survivor_id
    # Stale after 1.5 s, plus at most one 0.3 s (+20 %) sweep interval and the 0.2 s run.
    assert time.monotonic() - killed_at < 1.5 + 0.36 + 0.2 + 2.0, survivor.log()
    assert f"Worker {dead_id} is dead" in survivor.log_path.read_text()
    wait_for(lambda: not job_rows(db, schema), 5, "the job to be deleted", detail=survivor.log)
    assert locked_anything(db, schema) == []
    registry = db.execute(f'select id from "{schema}"._private_workers').fetchall()
    assert registry == [(survivor_id,)]
    survivor.signal(signal.SIGTERM)
    assert survivor.wait_exit(10) == 0
    assert db.execute(f'select id from "{schema}"._private_workers').fetchall() == []


# -- 4-7: an in-process worker -------------------------------------------------------------


class Hello(msgspec.Struct):
    message: str


class Recorder:
    """When each message was run (time.perf_counter), for tasks running in this process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.runs: list[tuple[str, float]] = []

    def record(self, message: str) -> None:
        with self._cond:
            self.runs.append((message, time.perf_counter()))
            self._cond.notify_all()

    def wait(self, message: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for seen, at in self.runs:
                    if seen == message:
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{message!r} did not run within {timeout:.1f} s")
                self._cond.wait(remaining)

    def messages(self) -> list[str]:
        with self._cond:
            return [message for message, _ in self.runs]


@dataclass
class InProcess:
    app: App
    recorder: Recorder
    application_name: str


@pytest.fixture
def hello_app(make_app: Callable[..., App], database_url: str) -> Callable[..., InProcess]:
    """An open app with a typed ``say_hello`` task whose connections carry a unique
    application_name, so that the test can find (and terminate) exactly those."""

    def build(**options: Any) -> InProcess:
        name = f"pgw_fault_{secrets.token_hex(4)}"
        options.setdefault("shutdown_grace_period", 2.0)
        app = make_app(database_url=make_conninfo(database_url, application_name=name), **options)
        recorder = Recorder()

        @app.task("say_hello")
        def say_hello(payload: Hello) -> None:
            recorder.record(payload.message)

        app.open()
        return InProcess(app, recorder, name)

    return build


@pytest.fixture
def running() -> Iterator[Callable[[App], WorkerHandle]]:
    """Start in-process workers; each is stopped afterwards, before its app is closed."""
    handles: list[WorkerHandle] = []

    def start(app: App) -> WorkerHandle:
        handle = app.start()
        handles.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in handles:
            handle.stop(5)


def listener_pids(db: Conn, application_name: str) -> list[int]:
    """The backends of this app's LISTEN connection (never this test's own): its last
    statement is its LISTEN or its health check."""
    rows = db.execute(
        """select pid from pg_stat_activity
        where datname = current_database() and application_name = %s
        and (query like 'LISTEN%%' or query like '%%listener_ping%%')
        and pid <> pg_backend_pid()""",
        [application_name],
    ).fetchall()
    return [pid for (pid,) in rows]


def add_job_sql(db: Conn, schema: str, message: str, payload: str | None = None) -> int:
    """Defer say_hello through the SQL add_job (which notifies), as any client could."""
    body = payload if payload is not None else msgspec.json.encode({"message": message}).decode()
    row = db.execute(
        f"""select id from "{schema}".add_job('say_hello', %s::json)""", [body]
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.gw("F-09", "F-11")
def test_notified_job_starts_fast_and_listener_survives_termination(
    hello_app: Callable[..., InProcess],
    running: Callable[[App], WorkerHandle],
    db: Conn,
    schema: str,
) -> None:
    # A 30 s poll interval: only notifications can explain a pickup within 2 s.
    env = hello_app(poll_interval=30.0)
    handle = running(env.app)
    [listener] = wait_for(
        lambda: listener_pids(db, env.application_name), 5, "the LISTEN connection"
    )
    db.execute(f'create table "{schema}".fault_messages (body text not null)')
    db.execute(
        f"""create function "{schema}".fault_messages_enqueue() returns trigger
        language plpgsql as $$
        begin
          perform "{schema}".add_job('say_hello', json_build_object('message', new.body));
          return new;
        end;
        $$"""
    )
    db.execute(
        f"""create trigger enqueue after insert on "{schema}".fault_messages
        for each row execute function "{schema}".fault_messages_enqueue()"""
    )

    def trigger_latency(body: str) -> float:
        started = time.perf_counter()
        db.execute(f'insert into "{schema}".fault_messages (body) values (%s)', [body])
        return env.recorder.wait(body, 2.0) - started

    latencies = [trigger_latency(f"notified-{i}") for i in range(3)]
    assert max(latencies) < NOTIFY_LATENCY, latencies

    db.execute("select pg_terminate_backend(%s)", [listener])
    started = time.perf_counter()
    add_job_sql(db, schema, "after-drop")
    after_drop = env.recorder.wait("after-drop", 2.5) - started
    assert after_drop < 2.0, after_drop

    [replacement] = wait_for(
        lambda: [p for p in listener_pids(db, env.application_name) if p != listener],
        5,
        "the listener to reconnect",
    )
    assert listener not in listener_pids(db, env.application_name)
    # Notifications work again through the new connection.
    reconnected = trigger_latency("after-reconnect")
    assert reconnected < NOTIFY_LATENCY, reconnected
    assert not handle.worker.wait_stopped(0)
    assert replacement != listener


@pytest.mark.gw("F-11")
def test_listener_reconnects_promptly_after_every_drop(
    hello_app: Callable[..., InProcess],
    running: Callable[[App], WorkerHandle],
    db: Conn,
    schema: str,
) -> None:
    # Every loss is a new incident: once a reconnection has succeeded, the reconnect
    # backoff must start over, not keep growing over the life of the process (after a
    # handful of drops it would reach 30 s, and jobs would wait for the poll meanwhile).
    env = hello_app(poll_interval=30.0)
    running(env.app)
    [pid] = wait_for(lambda: listener_pids(db, env.application_name), 5, "LISTEN")
    took = []
    for drop in range(1, 9):
        db.execute("select pg_terminate_backend(%s)", [pid])
        started = time.monotonic()
        [pid] = wait_for(
            lambda old=pid: [p for p in listener_pids(db, env.application_name) if p != old],
            5,
            f"the listener to reconnect after drop {drop}",
        )
        took.append(round(time.monotonic() - started, 3))
        assert took[-1] < 1.0, f"reconnection times after each drop (s): {took}"
    started = time.perf_counter()
    add_job_sql(db, schema, "after-drops")
    latency = env.recorder.wait("after-drops", 2.0) - started
    assert latency < NOTIFY_LATENCY, latency


@pytest.mark.gw("F-11")
def test_job_without_notification_is_found_by_polling(
    hello_app: Callable[..., InProcess],
    running: Callable[[App], WorkerHandle],
    db: Conn,
    schema: str,
) -> None:
    env = hello_app(poll_interval=0.5)
    running(env.app)
    wait_for(lambda: listener_pids(db, env.application_name), 5, "the LISTEN connection")
    time.sleep(0.1)  # let the wake-up that follows LISTEN pass
    started = time.perf_counter()
    # A plain insert: no add_job, so no jobs:insert notification reaches anyone.
    db.execute(
        f"""insert into "{schema}"._private_jobs (task_id, payload)
        select id, '{{"message": "polled"}}'::json from "{schema}"._private_tasks
        where identifier = 'say_hello'"""
    )
    polled = env.recorder.wait("polled", 3.0) - started
    assert polled < 1.5, polled


def test_pool_connections_terminated_while_jobs_arrive(
    hello_app: Callable[..., InProcess],
    running: Callable[[App], WorkerHandle],
    db: Conn,
    schema: str,
) -> None:
    env = hello_app(concurrency=4)
    handle = running(env.app)
    wait_for(lambda: listener_pids(db, env.application_name), 5, "the LISTEN connection")

    def terminate_worker_backends() -> list[str]:
        # Only this app's backends: its application_name is unique to this test.
        # Returns the last statement of each backend terminated.
        rows = db.execute(
            """select query, pg_terminate_backend(pid) from pg_stat_activity
            where datname = current_database() and application_name = %s
            and pid <> pg_backend_pid()""",
            [env.application_name],
        ).fetchall()
        return [query for (query, ok) in rows if ok]

    expected: list[str] = []
    rounds = []
    for round_ in range(4):
        for i in range(10):
            message = f"job-{round_}-{i}"
            add_job_sql(db, schema, message)
            expected.append(message)
        rounds.append(terminate_worker_backends())
        time.sleep(0.15)
    # The first round hit the LISTEN connection and the pool's; later rounds hit
    # whatever had been reconnected by then (possibly nothing yet).
    assert any(q.startswith("LISTEN") for q in rounds[0]), rounds
    assert any(not q.startswith("LISTEN") for q in rounds[0]), rounds
    assert sum(len(r) for r in rounds) >= len(rounds), rounds

    def all_ran() -> bool:
        return set(env.recorder.messages()) >= set(expected) and not job_rows(db, schema)

    wait_for(
        all_ran,
        20,
        "every job to run after the connection losses",
        detail=lambda: f"ran {len(env.recorder.messages())}, rows {job_rows(db, schema)}",
    )
    counts = Counter(env.recorder.messages())
    assert {m: counts[m] for m in expected} == dict.fromkeys(expected, 1)
    assert not handle.worker.wait_stopped(0), "the worker thread stopped"
    assert handle.error is None
    add_job_sql(db, schema, "afterwards")
    env.recorder.wait("afterwards", 5.0)
    wait_for(lambda: not job_rows(db, schema), 5, "the last job to be deleted")
    assert locked_anything(db, schema) == []


def test_undecodable_payload_fails_permanently_and_worker_goes_on(
    hello_app: Callable[..., InProcess],
    running: Callable[[App], WorkerHandle],
    db: Conn,
    schema: str,
) -> None:
    env = hello_app()
    handle = running(env.app)
    bad = add_job_sql(db, schema, "", payload='{"message": 42}')

    def failed() -> dict[str, Any] | None:
        rows = [r for r in job_rows(db, schema) if r["id"] == bad]
        return rows[0] if rows and rows[0]["last_error"] is not None else None

    row = wait_for(failed, 5, "the bad job to fail")
    assert row["attempts"] == row["max_attempts"], row
    assert "$.message" in row["last_error"], row["last_error"]
    assert row["locked_at"] is None
    assert row["locked_by"] is None

    add_job_sql(db, schema, "good")
    env.recorder.wait("good", 5.0)
    assert env.recorder.messages() == ["good"]
    assert not handle.worker.wait_stopped(0)
    wait_for(lambda: len(job_rows(db, schema)) == 1, 5, "the good job to be deleted")
    assert locked_anything(db, schema) == []
