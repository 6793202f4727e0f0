"""Workers' lifecycle as graphile-worker's suites check it: signals, stopping, hooks in
order, the database settings, cleanup under a live worker, and cron slots (ids in
tests/behaviours.toml)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from processes import wait_for
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from pgworker import App, ConfigurationError, Job, Plugin
from pgworker.cli import cli
from pgworker.cron import Cron, CronScheduler
from pgworker.hooks import Hooks

Conn = psycopg.Connection[tuple[Any, ...]]


def count_jobs(db: Conn, schema: str) -> int:
    row = db.execute(f'select count(*) from "{schema}"._private_jobs').fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.gw("SH-01")
def test_run_installs_signal_handlers_and_removes_them_when_it_stops(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    during: list[Any] = []

    def ours(signum: int, frame: Any) -> None:  # pragma: no cover - replaced during run
        raise AssertionError("the worker's handler should have caught the signal")

    @app.task("stopper")
    def stopper(payload: dict[str, Any]) -> None:
        during.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop, handled by the worker

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        with app:
            app.migrate()
            stopper.defer({})
            app.run()  # returns once the signal has stopped it
        assert len(during) == 1
        assert during[0] not in (ours, signal.SIG_DFL, None)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.gw("SH-07", "SH-08")
def test_a_started_worker_is_a_context_manager_that_stops_promptly(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(concurrency=3)
    ran: list[int] = []

    @app.task("job3")
    def job3(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    with app:
        app.migrate()
        with app.start() as handle:
            job3.defer_many([{"n": n} for n in range(5)])
            wait_for(lambda: count_jobs(db, schema) == 0, 5, "the five jobs to run")
            stopping = time.monotonic()
        assert handle.worker.wait_stopped(0)
        assert time.monotonic() - stopping < 2.0
    assert sorted(ran) == [0, 1, 2, 3, 4]


class Counting(Plugin):
    """Counts hook calls by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def on_worker_start(self, worker: Any) -> None:
        self._count("worker_start")

    def on_worker_shutdown(self, worker: Any) -> None:
        self._count("worker_shutdown")

    def on_job_started(self, job: Job) -> None:
        self._count("started")

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        self._count("completed")


@pytest.mark.gw("EV-03", "EV-04", "SH-05")
def test_job_hooks_count_up_as_jobs_run_and_shutdown_comes_only_with_stop(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    counting = Counting()
    app = make_app(concurrency=1, plugins=[counting])
    inside: list[tuple[int, int, int]] = []

    @app.task("job3")
    def job3(payload: dict[str, int]) -> None:
        with counting.lock:
            inside.append((payload["n"], counting.counts["started"], counting.counts["completed"]))

    with app:
        app.migrate()
        handle = app.start()
        try:
            for n in range(5):
                job3.defer({"n": n})
                wait_for(lambda n=n: counting.counts["completed"] == n + 1, 5, f"job {n}")
            assert counting.counts["worker_start"] == 1
            assert counting.counts["worker_shutdown"] == 0
        finally:
            handle.stop()
    # Job i runs after i + 1 starts and i completions; each then completes.
    assert inside == [(n, n + 1, n) for n in range(5)]
    assert (counting.counts["started"], counting.counts["completed"]) == (5, 5)
    assert counting.counts["worker_shutdown"] == 1


@pytest.fixture
def caller_pool(database_url: str) -> Iterator[ConnectionPool[psycopg.Connection[Any]]]:
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        database_url, min_size=1, max_size=8, open=True
    )
    yield pool
    pool.close()


@pytest.mark.gw("WU-01", "WU-09")
def test_an_app_on_the_callers_pool_runs_and_leaves_the_pool_open(
    caller_pool: ConnectionPool[psycopg.Connection[Any]], schema: str
) -> None:
    app = App(pool=caller_pool, schema=schema, poll_interval=0.2)
    ran: list[Any] = []

    @app.task("job3")
    def job3(payload: dict[str, Any]) -> None:
        ran.append(payload)

    with app:
        app.migrate()
        job3.defer({"a": 1})
        app.run_once()
    assert ran == [{"a": 1}]
    assert not caller_pool.closed
    with caller_pool.connection() as conn:
        assert conn.execute(f'select count(*) from "{schema}".jobs').fetchone() == (0,)


@pytest.mark.gw("WU-05", "E-13")
def test_a_pool_and_a_database_url_together_are_refused(
    caller_pool: ConnectionPool[psycopg.Connection[Any]], database_url: str
) -> None:
    with pytest.raises(ConfigurationError, match="either pool or database_url, not both"):
        App(pool=caller_pool, database_url=database_url)


@pytest.mark.gw("ADM-08")
def test_cleaning_up_task_identifiers_spares_those_a_live_worker_runs(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task("t")
    def t(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    with app:
        app.migrate()
        with app.start():
            t.defer({"n": 1})
            wait_for(lambda: count_jobs(db, schema) == 0, 5, "the first job to run")
            task_id = db.execute(
                f"select id from \"{schema}\"._private_tasks where identifier = 't'"
            ).fetchone()
            app.defer("gone", {})
            app.admin.complete_jobs([j.job.id for j in app.admin.jobs(task="gone")])
            result = app.admin.cleanup(gc_task_identifiers=True)
            assert result.task_identifiers == 1  # "gone", which no worker serves
            assert (
                db.execute(
                    f"select id from \"{schema}\"._private_tasks where identifier = 't'"
                ).fetchone()
                == task_id
            )
            t.defer({"n": 2})
            wait_for(lambda: ran == [1, 2], 5, "a new job of the task to run")


def cli_env(database_url: str, **overrides: str) -> dict[str, str | None]:
    """The environment for an in-process CLI call: no database setting but ``overrides``."""
    cleared: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith("PG") or name == "DATABASE_URL"
    }
    return {**cleared, "PGWORKER_NO_EMBEDDED": "1", **overrides}


@pytest.mark.gw("WU-06", "WU-07")
@pytest.mark.parametrize("setting", ["DATABASE_URL", "PG variables"])
def test_run_once_finds_the_database_from_the_environment(
    database_url: str, schema: str, db: Conn, setting: str
) -> None:
    if setting == "DATABASE_URL":
        env = cli_env(database_url, DATABASE_URL=database_url)
    else:
        params = conninfo_to_dict(database_url)
        names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
        env = cli_env(
            database_url,
            PGDATABASE=str(params["dbname"]),
            **{names[k]: str(v) for k, v in params.items() if k in names},
        )
    runner = CliRunner()
    migrated = runner.invoke(cli, ["migrate", "--schema", schema], env=env)
    assert migrated.exit_code == 0, migrated.output
    db.execute(f"""select "{schema}".add_job('say_hello', '{{"message": "env"}}')""")
    result = runner.invoke(
        cli, ["run", "examples.run_once:app", "--once", "--schema", schema], env=env
    )
    assert result.exit_code == 0, result.output
    assert count_jobs(db, schema) == 0


@pytest.mark.gw("CRS-05", "CRS-10", "EDGE-07")
def test_a_four_hourly_item_fires_once_at_its_slot(opened: App, db: Conn, schema: str) -> None:
    scheduled: list[tuple[str, datetime]] = []

    class Recorder(Plugin):
        def on_cron_job_scheduled(self, identifier: str, moment: datetime, job_id: int) -> None:
            scheduled.append((identifier, moment))

    item = Cron("0 */4 * * *", "my_task").build()
    day = datetime(2021, 1, 1, tzinfo=UTC)
    wakes = iter([day.replace(hour=3, second=1), day.replace(hour=4, second=1)])
    now = [day.replace(hour=1)]
    stop = threading.Event()
    jobs_after_each_wake: list[int] = []

    def sleep(seconds: float) -> None:
        jobs_after_each_wake.append(count_jobs(db, schema))
        try:
            now[0] = next(wakes)
        except StopIteration:
            stop.set()

    scheduler = CronScheduler(
        opened.store, [item], clock=lambda: now[0], sleep=sleep, hooks=Hooks([Recorder()])
    )
    scheduler.run(stop)
    assert jobs_after_each_wake == [0, 0, 1]  # at 01:00, at 03:00:01, at 04:00:01
    assert scheduled == [("my_task", day.replace(hour=4))]
    [(payload,)] = db.execute(f'select payload from "{schema}"._private_jobs').fetchall()
    assert payload["_cron"]["ts"] == "2021-01-01T04:00:00.000Z"


@pytest.mark.gw("CRP-20")
def test_a_cron_item_defined_in_code_does_not_backfill_by_default() -> None:
    assert Cron("0 4 * * *", "t").build().backfill_period == timedelta(0)
