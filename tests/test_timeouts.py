"""Timeouts and cancellation: sync tasks are asked to stop, async ones are cancelled,
a sync task that ignores its timeout makes a CLI worker exit, and jobs are cancelled
from the API and the CLI, also while the running worker's listener is down."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from processes import WorkerProcess, wait_for
from psycopg.conninfo import make_conninfo

from pgworker import App, Job, JobContext, JobTimeoutError, Plugin
from pgworker.cli import cli

Conn = psycopg.Connection[tuple[Any, ...]]


def job_row(db: Conn, schema: str, job_id: int) -> dict[str, Any] | None:
    cur = db.execute(
        f"""select attempts, max_attempts, locked_by, last_error, run_at > now() as later
        from "{schema}".jobs where id = %s""",
        [job_id],
    )
    row = cur.fetchone()
    names = [c.name for c in cur.description or []]
    return None if row is None else dict(zip(names, row, strict=True))


def settled(db: Conn, schema: str, job_id: int) -> Callable[[], dict[str, Any] | None]:
    """A check for wait_for: the job's row once a worker took it and let it go."""

    def check() -> dict[str, Any] | None:
        row = job_row(db, schema, job_id)
        done = row is not None and row["attempts"] > 0 and row["locked_by"] is None
        return row if done else None

    return check


@pytest.fixture
def running_app(make_app: Callable[..., App]) -> Iterator[Callable[..., App]]:
    """Apps (open, migrated) whose workers are started here and stopped afterwards."""
    handles = []

    def build(app: App) -> App:
        app.open()
        handles.append(app.start())
        return app

    yield build
    for handle in handles:
        handle.stop(10)


def test_a_sync_task_that_polls_stops_at_its_timeout_and_is_retried(
    make_app: Callable[..., App], running_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app()
    seen: list[float | None] = []

    @app.task("poller", timeout=0.5)
    def poller(payload: dict[str, Any], ctx: JobContext) -> None:
        seen.append(ctx.time_left)
        while not ctx.wait(0.05):
            pass
        assert ctx.cancelled
        ctx.check()  # raises JobTimeoutError

    running_app(app)
    started = time.monotonic()
    job = app.defer("poller", {})
    row = wait_for(settled(db, schema, job.id), 5, "the job to time out")
    assert time.monotonic() - started < 2.0
    assert row["last_error"] == "Timed out after 0.5 s (JobTimeoutError: timed out after 0.5 s)"
    assert row["attempts"] == 1
    assert row["later"]  # retried by the usual backoff
    [time_left] = seen
    assert time_left is not None
    assert 0.3 < time_left <= 0.5


def test_an_async_task_is_cancelled_at_its_timeout(
    make_app: Callable[..., App], running_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(default_timeout=0.5)
    unwound = threading.Event()

    @app.task("sleeper")
    async def sleeper(payload: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            unwound.set()

    running_app(app)
    started = time.monotonic()
    job = app.defer("sleeper", {})
    row = wait_for(settled(db, schema, job.id), 5, "the job to time out")
    assert time.monotonic() - started < 2.0
    assert unwound.is_set()
    assert row["last_error"].startswith("Timed out after 0.5 s (CancelledError")
    assert row["attempts"] == 1
    assert row["later"]


def test_a_job_that_finishes_after_its_timeout_completes(
    make_app: Callable[..., App], running_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """Asked to stop, a task that returns normally anyway has done its work."""
    app = make_app()

    @app.task("late", timeout=0.2)
    def late(payload: dict[str, Any]) -> None:
        time.sleep(0.5)

    running_app(app)
    job = app.defer("late", {})
    wait_for(lambda: job_row(db, schema, job.id) is None, 5, "the job to complete")


def test_a_sync_task_that_ignores_its_timeout_makes_the_cli_worker_exit(
    spawn_worker: Callable[..., WorkerProcess],
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
) -> None:
    """The stubborn job (timeout 1 s, hard limit 1 s past it) sleeps 30 s: the CLI
    worker stops taking jobs, exits 1 once its grace period is over, and the job is
    failed (attempt counted) and runs again elsewhere: never while the first run lives."""
    doomed = spawn_worker(FAULT_HARD_TIMEOUT="1", FAULT_GRACE="1")
    client = make_app().open()
    client.migrate()
    job = client.defer("stubborn", {"seconds": 30, "retry_seconds": 0.1})
    doomed_id = wait_for(
        lambda: doomed.running() and doomed.marker(job.id, 1, "started"), 15, "the first run"
    )
    assert doomed.wait_exit(15) == 1, doomed.log()
    exited = time.time()
    log = doomed.log_path.read_text()
    assert "still runs 1 s after its timeout of 1 s" in log, log
    row = job_row(db, schema, job.id)
    assert row is not None
    assert row["locked_by"] is None
    assert row["attempts"] == 1
    assert row["last_error"].startswith("Timed out after 1 s and overran it"), row

    other = spawn_worker()
    wait_for(lambda: other.running() and other.marker(job.id, 2, "done"), 15, "the retry to run")
    events = (other.markers / "events.log").read_text().splitlines()
    starts = [
        line.split() for line in events if line.startswith(f"{job.id}-") and "started" in line
    ]
    assert starts[0][1] == doomed_id
    assert len(starts) == 2, starts
    assert float(starts[1][2]) > exited, starts
    client.close()
    other.signal(signal.SIGTERM)
    assert other.wait_exit(10) == 0


def test_cancelling_waiting_and_running_jobs_from_the_api(
    make_app: Callable[..., App], running_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app()
    started = threading.Event()

    @app.task("long_sync")
    def long_sync(payload: dict[str, Any], ctx: JobContext) -> None:
        started.set()
        while not ctx.wait(0.05):
            pass
        ctx.check()

    app.open()
    app.migrate()
    waiting = app.defer("long_sync", {}, run_at=None)
    later = app.defer("long_sync", {}, priority=10)
    assert app.admin.cancel(waiting.id, "not needed") == "removed"
    assert job_row(db, schema, waiting.id) is None
    assert app.admin.cancel(987654321) == "not_found"

    running_app(app)
    assert started.wait(5)
    assert app.admin.cancel(later.id, "operator said so") == "cancelling"
    row = wait_for(settled(db, schema, later.id), 5, "the running job to stop")
    assert row["last_error"] == "Cancelled: operator said so"
    assert row["attempts"] == row["max_attempts"]  # never retried


def test_cancel_from_the_cli_reaches_an_async_job_while_the_listener_is_down(
    make_app: Callable[..., App],
    database_url: str,
    db: Conn,
    schema: str,
) -> None:
    """The cancel request is a flag on the job's row: with the worker's LISTEN connection
    cut again and again, the worker still sees it within its poll interval."""
    name = "pgw_cancel_test"
    app = make_app(
        database_url=make_conninfo(database_url, application_name=name), poll_interval=0.5
    )
    cancelled = threading.Event()
    started = threading.Event()

    @app.task("long_async")
    async def long_async(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with app:
        handle = app.start()
        try:
            job = app.defer("long_async", {})
            assert started.wait(5)
            cutting = threading.Event()

            def cut_listener() -> None:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    deadline = time.monotonic() + 4
                    while time.monotonic() < deadline and not cancelled.is_set():
                        conn.execute(
                            """select pg_terminate_backend(pid) from pg_stat_activity
                            where application_name = %s
                            and (query like 'LISTEN%%' or query like '%%listener_ping%%')""",
                            [name],
                        )
                        cutting.set()
                        time.sleep(0.01)

            cutter = threading.Thread(target=cut_listener)
            cutter.start()
            assert cutting.wait(5)
            result = CliRunner().invoke(
                cli,
                [
                    "cancel",
                    str(job.id),
                    "--reason",
                    "too slow",
                    "--database-url",
                    database_url,
                    "--schema",
                    schema,
                ],
            )
            assert result.exit_code == 0, result.output
            assert "its worker was asked to stop it" in result.output
            assert cancelled.wait(3), "the coroutine was not cancelled"
            row = wait_for(settled(db, schema, job.id), 5, "the job to be recorded")
            cutter.join()
        finally:
            handle.stop()
    assert row["last_error"] == "Cancelled: too slow"
    assert row["attempts"] == row["max_attempts"]

    missing = CliRunner().invoke(
        cli, ["cancel", "987654321", "--database-url", database_url, "--schema", schema]
    )
    assert missing.exit_code == 1
    assert "no job with id 987654321" in missing.output


def test_a_cancelled_job_that_comes_back_never_runs(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """A job cancelled while its worker was dying comes back (recovered) with the cancel
    flag: the next worker fails it without running it."""
    app = make_app()
    ran: list[int] = []

    @app.task("work")
    def work(payload: dict[str, Any]) -> None:
        ran.append(1)

    with app:
        app.migrate()
        job = app.defer("work", {})
        db.execute(
            f"""update "{schema}"._private_jobs set locked_by = 'gone', locked_at = now()
            where id = %s""",
            [job.id],
        )
        assert app.admin.cancel(job.id, "changed my mind") == "cancelling"
        db.execute(
            f"""update "{schema}"._private_jobs set locked_by = null, locked_at = null
            where id = %s""",
            [job.id],
        )
        app.run_once()
    row = job_row(db, schema, job.id)
    assert ran == []
    assert row is not None
    assert row["last_error"] == "Cancelled: changed my mind"
    assert row["attempts"] == row["max_attempts"]


def test_timeouts_are_checked(make_app: Callable[..., App]) -> None:
    app = make_app()
    with pytest.raises(Exception, match="timeout must be positive"):
        app.task("bad", timeout=0)(lambda payload: None)
    with pytest.raises(Exception, match="default_timeout must be positive"):
        make_app(default_timeout=-1)
    assert issubclass(JobTimeoutError, TimeoutError)


def test_an_overrun_in_process_is_logged_and_reported(
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Beside a web server (``app.start()``) an overrun doesn't stop the worker: a log
    line and the on_job_overran hook say so, and the job keeps its thread until it
    returns."""
    overran: list[tuple[int, float]] = []

    class Watcher(Plugin):
        def on_job_overran(self, job: Job, timeout: float) -> None:
            overran.append((job.id, timeout))

    app = make_app(hard_timeout=0.3, plugins=[Watcher()])

    @app.task("stubborn", timeout=0.2)
    def stubborn(payload: dict[str, Any]) -> None:
        time.sleep(1.0)

    @app.task("quick")
    def quick(payload: dict[str, Any]) -> None:
        pass

    with app:
        handle = app.start()
        try:
            job = app.defer("stubborn", {})
            wait_for(lambda: overran, 5, "the overrun to be reported")
            follow_up = app.defer("quick", {})
            wait_for(lambda: job_row(db, schema, follow_up.id) is None, 5, "another job")
            wait_for(lambda: job_row(db, schema, job.id) is None, 5, "the stubborn job to end")
        finally:
            handle.stop()
    assert overran == [(job.id, 0.2)]
    assert f"job #{job.id} (stubborn) still runs 0.3 s after its timeout of 0.2 s" in caplog.text
    assert handle.worker.exit_reason is None
