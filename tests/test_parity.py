"""graphile-worker behaviours ported one by one: a settable worker id, the schema from
GRAPHILE_WORKER_SCHEMA, ``run --cleanup``, the events of listen, empty fetches, stale-lock
resets and cron start, and the application's clock for run_at."""

from __future__ import annotations

import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgworker.fetcher
from pgworker import (
    App,
    ConfigurationError,
    JobContext,
    Plugin,
    RawJob,
    Recovery,
    WorkerIdInUseError,
)
from pgworker.cli import cli
from pgworker.hooks import Hooks
from pgworker.recovery import Sweeper
from pgworker.store import Store
from tests.processes import wait_for
from tests.test_examples import run_example

Conn = psycopg.Connection[tuple[Any, ...]]
HOUR = timedelta(hours=1)


@pytest.fixture
def app_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], ModuleType]]:
    """Write a module holding ``app`` (the code given) and import it for the CLI; it is
    forgotten afterwards, so that no test sees another's App."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(code: str) -> ModuleType:
        name = f"pgw_parity_{secrets.token_hex(4)}"
        (tmp_path / f"{name}.py").write_text(code)
        names.append(name)
        __import__(name)
        return sys.modules[name]

    yield write
    for name in names:
        sys.modules.pop(name, None)


RECORDING_APP = """
from pgworker import App, JobContext

app = App(poll_interval=0.2)
seen = []


@app.task("record")
def record(payload: dict, ctx: JobContext) -> None:
    seen.append(ctx.worker_id)
"""


# -- worker id --------------------------------------------------------------------------


def blocking_app(make_app: Callable[..., App], **options: Any) -> tuple[App, threading.Event]:
    """An app whose ``hold`` task runs until the returned event is set."""
    release = threading.Event()
    app = make_app(**options)

    @app.task("hold")
    def hold(payload: dict[str, Any], ctx: JobContext) -> None:
        release.wait(10)

    return app, release


def test_the_worker_id_given_is_the_lock_owner_and_the_registry_key(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app, release = blocking_app(make_app, worker_id="web-1.example:7")
    with app:
        handle = app.start()
        try:
            assert handle.worker_id == "web-1.example:7"
            job = app.defer("hold", {})
            locked_by = wait_for(
                lambda: db.execute(
                    f'select locked_by from "{schema}".jobs where id = %s', [job.id]
                ).fetchone()[0],  # type: ignore[index]
                5,
                "the job to be locked",
            )
            assert locked_by == "web-1.example:7"
            registered = db.execute(f'select id from "{schema}"._private_workers').fetchall()
            assert registered == [("web-1.example:7",)]
        finally:
            release.set()
            handle.stop(5)


@pytest.mark.parametrize("worker_id", ["", "two words", "tab\there", "x" * 129])
def test_a_bad_worker_id_is_refused(make_app: Callable[..., App], worker_id: str) -> None:
    with pytest.raises(ConfigurationError, match="worker_id must be"):
        make_app(worker_id=worker_id)
    with pytest.raises(ConfigurationError, match="worker_id must be"):
        make_app().configure(worker_id=worker_id)


def test_a_second_live_worker_with_the_same_id_is_refused(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    first, release = blocking_app(make_app, worker_id="twin")
    second, _ = blocking_app(make_app, worker_id="twin")
    with first, second:
        handle = first.start()
        try:
            job = first.defer("hold", {})
            wait_for(
                lambda: (
                    db.execute(
                        f'select locked_by from "{schema}".jobs where id = %s', [job.id]
                    ).fetchone()[0]  # type: ignore[index]
                    == "twin"
                ),
                5,
                "the first worker to take the job",
            )
            with pytest.raises(WorkerIdInUseError, match="'twin' belongs to a live worker"):
                second.start()
            # The refused worker changed nothing: the first still holds its job and row.
            assert db.execute(
                f'select locked_by from "{schema}".jobs where id = %s', [job.id]
            ).fetchone() == ("twin",)
            assert db.execute(f'select count(*) from "{schema}"._private_workers').fetchone() == (
                1,
            )
        finally:
            release.set()
            handle.stop(5)
        # Once the first has stopped (and left the registry), the id is free again.
        release.clear()
        handle = second.start()
        handle.stop(5)


def test_a_dead_predecessor_s_locked_jobs_come_back_to_a_worker_with_its_id(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(worker_id="steady")
    ran: list[int] = []

    @app.task("work")
    def work(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    with app:
        app.migrate()
        job = app.defer("work", {})
        # What a crash leaves: the job locked under the id, a registry row gone stale.
        db.execute(
            f"""update "{schema}"._private_jobs set locked_by = 'steady', locked_at = now(),
            attempts = 1 where id = %s""",
            [job.id],
        )
        db.execute(
            f"""insert into "{schema}"._private_workers (id, last_heartbeat_at, metadata)
            values ('steady', now() - interval '1 hour', '{{"runtime": "pgworker"}}')"""
        )
        handle = app.start()
        try:
            wait_for(lambda: ran == [job.id], 5, "the predecessor's job to run again")
        finally:
            handle.stop(5)


def test_cli_run_takes_a_worker_id(
    app_module: Callable[[str], ModuleType], database_url: str, schema: str
) -> None:
    module = app_module(RECORDING_APP)
    common = ["--database-url", database_url, "--schema", schema]
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate", *common]).exit_code == 0
    assert runner.invoke(cli, ["defer", "record", *common]).exit_code == 0
    target = f"{module.__name__}:app"
    result = runner.invoke(cli, ["run", target, "--once", "--worker-id", "cli-7", *common])
    assert result.exit_code == 0, result.output
    assert module.seen == ["cli-7"]
    result = runner.invoke(cli, ["run", target, "--once", "--worker-id", "a b", *common])
    assert result.exit_code == 1
    assert "worker_id must be printable characters without spaces" in result.output


# -- GRAPHILE_WORKER_SCHEMA -------------------------------------------------------------


def test_graphile_worker_schema_is_the_default_schema(
    database_url: str, schema: str, db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App(database_url=database_url)  # built before the variable is set: read at open
    monkeypatch.setenv("GRAPHILE_WORKER_SCHEMA", schema)
    with app:
        app.migrate()
        assert app.schema == schema
        app.defer("anything", {"n": 1})
    assert db.execute(f'select task_identifier from "{schema}".jobs').fetchall() == [("anything",)]


def test_an_explicit_schema_wins_over_graphile_worker_schema(
    database_url: str, schema: str, db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHILE_WORKER_SCHEMA", "pgw_not_this_one")
    with App(database_url=database_url, schema=schema) as app:
        assert app.schema == schema
    app = App(database_url=database_url).configure(schema=schema)
    with app:
        assert app.schema == schema
    runner = CliRunner()
    result = runner.invoke(cli, ["migrate", "--database-url", database_url, "--schema", schema])
    assert f"Schema {schema!r}: installed" in result.output
    gone = db.execute("select 1 from pg_namespace where nspname = 'pgw_not_this_one'").fetchall()
    assert gone == []


def test_cli_takes_the_schema_from_graphile_worker_schema(
    database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHILE_WORKER_SCHEMA", schema)
    result = CliRunner().invoke(cli, ["migrate", "--database-url", database_url])
    assert f"Schema {schema!r}: installed" in result.output
    monkeypatch.setenv("GRAPHILE_WORKER_SCHEMA", "x" * 64)
    result = CliRunner().invoke(cli, ["migrate", "--database-url", database_url])
    assert result.exit_code == 1
    assert "GRAPHILE_WORKER_SCHEMA must be 1 to 63 characters" in result.output


# -- cleanup ----------------------------------------------------------------------------


def names(db: Conn, schema: str, table: str, column: str) -> set[str]:
    return {row[0] for row in db.execute(f'select {column} from "{schema}".{table}').fetchall()}


def test_run_cleanup_deletes_what_graphile_worker_s_cleanup_tasks_delete(
    app_module: Callable[[str], ModuleType], database_url: str, schema: str, db: Conn
) -> None:
    module = app_module(RECORDING_APP)
    with App(database_url=database_url, schema=schema) as setup:
        setup.migrate()
        dead = setup.defer("old_failed", {})
        running_dead = setup.defer("old_failed_running", {})
        alive = setup.defer("in_use", {}, queue="busy")
        setup.admin.permanently_fail_jobs([dead.id, running_dead.id])
        for queue in ("empty", "empty_locked"):
            setup.defer("gone", {}, queue=queue)
    db.execute(f"""delete from "{schema}"._private_jobs where id not in (%s, %s, %s)""",
               [dead.id, running_dead.id, alive.id])  # fmt: skip
    db.execute(
        f"""update "{schema}"._private_jobs set locked_at = now(), locked_by = 'w'
        where id = %s""",
        [running_dead.id],
    )
    db.execute(
        f"""update "{schema}"._private_job_queues set locked_at = now(), locked_by = 'w'
        where queue_name = 'empty_locked'"""
    )
    db.execute(f"""insert into "{schema}"._private_tasks (identifier) values ('record'),
        ('elsewhere')""")  # fmt: skip
    db.execute(
        f"""insert into "{schema}"._private_workers (id, last_heartbeat_at, metadata)
        values ('other', now(), '{{"runtime": "pgworker", "tasks": ["elsewhere"]}}')"""
    )
    result = CliRunner().invoke(
        cli,
        ["run", f"{module.__name__}:app", "--database-url", database_url, "--schema", schema,
         "--cleanup", "GC_TASK_IDENTIFIERS, GC_JOB_QUEUES", "--cleanup", "DELETE_PERMAFAILED_JOBS"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Deleted 1 permanently failed jobs" in result.output
    assert "Deleted 1 job queues" in result.output
    assert "Deleted 2 task identifiers" in result.output
    assert names(db, schema, "_private_jobs", "id::text") == {str(running_dead.id), str(alive.id)}
    assert names(db, schema, "_private_job_queues", "queue_name") == {"busy", "empty_locked"}
    # Kept: used by a job, the app's own task, a task a registered worker runs.
    assert names(db, schema, "_private_tasks", "identifier") == {
        "old_failed_running",
        "in_use",
        "record",
        "elsewhere",
    }
    assert module.seen == []  # it cleaned up and ran nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cleanup", "GC_JOB_QUEUES,VACUUM"], "expected a comma-separated list of"),
        (["--cleanup", ","], "expected a comma-separated list of"),
        (["--cleanup", "GC_JOB_QUEUES", "--once"], "--cleanup cleans up and exits"),
    ],
)
def test_run_cleanup_refuses_what_it_cannot_do(
    app_module: Callable[[str], ModuleType], args: list[str], message: str
) -> None:
    module = app_module(RECORDING_APP)
    result = CliRunner().invoke(cli, ["run", f"{module.__name__}:app", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.gw("ADM-08")
def test_task_identifier_cleanup_keeps_the_ids_a_running_worker_knows(
    make_app: Callable[..., App], database_url: str, schema: str, db: Conn
) -> None:
    """ADM-08: a task whose only job has run keeps its id through a cleanup from outside
    the worker's process, so that its next job still runs."""
    app = make_app()
    ran: list[int] = []

    @app.task("once_in_a_while")
    def once_in_a_while(payload: dict[str, Any]) -> None:
        ran.append(1)

    task_id = f'select id from "{schema}"._private_tasks where identifier = %s'
    with app:
        handle = app.start()
        try:
            app.defer("once_in_a_while", {})
            wait_for(lambda: ran == [1], 5, "the first job")
            before = db.execute(task_id, ["once_in_a_while"]).fetchone()
            result = CliRunner().invoke(
                cli,
                ["cleanup", "--gc-task-identifiers", "--database-url", database_url,
                 "--schema", schema],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert db.execute(task_id, ["once_in_a_while"]).fetchone() == before
            app.defer("once_in_a_while", {})
            wait_for(lambda: ran == [1, 1], 5, "the job added after the cleanup")
        finally:
            handle.stop(5)


# -- events -----------------------------------------------------------------------------


class Events(Plugin):
    """Records graphile-worker's events as they fire."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def on_cron_starting(self) -> None:
        self.seen.append(("cron_starting", None))

    def on_cron_started(self) -> None:
        self.seen.append(("cron_started", None))

    def on_fetch_empty(self) -> None:
        self.seen.append(("fetch_empty", None))

    def on_reset_locked_started(self) -> None:
        self.seen.append(("reset_locked_started", None))

    def on_reset_locked_finished(self, error: str | None) -> None:
        self.seen.append(("reset_locked_finished", error))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


@pytest.mark.gw("EV-05")
def test_a_fetch_that_finds_nothing_is_reported(make_app: Callable[..., App]) -> None:
    events = Events()
    app = make_app(plugins=[events])
    ran: list[int] = []

    @app.task("work")
    def work(payload: dict[str, Any]) -> None:
        ran.append(1)

    with app:
        app.migrate()
        app.defer("work", {})
        handle = app.start()
        try:
            wait_for(lambda: ran == [1] and "fetch_empty" in events.names(), 5, "an empty fetch")
        finally:
            handle.stop(5)


@pytest.mark.gw("CRS-04", "EV-07")
def test_cron_reports_starting_then_started_after_registering(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    events = Events()
    known: list[int] = []

    class Registered(Plugin):
        def on_cron_started(self) -> None:
            row = db.execute(f'select count(*) from "{schema}"._private_known_crontabs').fetchone()
            known.append(row[0] if row else -1)

    app = make_app(plugins=[events, Registered()], crontab="0 4 * * * nightly\n")

    @app.task("nightly")
    def nightly(payload: dict[str, Any]) -> None:
        pass

    with app:
        handle = app.start()
        try:
            wait_for(lambda: "cron_started" in events.names(), 5, "cron to start")
        finally:
            handle.stop(5)
    cron = [name for name in events.names() if name.startswith("cron")]
    assert cron == ["cron_starting", "cron_started"]
    assert known == [1]  # the item was registered before "started"


@pytest.mark.gw("LR-02", "EV-06")
def test_the_stale_lock_reset_reports_start_and_success(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    events = Events()
    app = make_app(plugins=[events])
    ran: list[int] = []

    @app.task("work")
    def work(payload: dict[str, Any]) -> None:
        ran.append(1)

    with app:
        app.migrate()
        job = app.defer("work", {})
        db.execute(
            f"""update "{schema}"._private_jobs set locked_by = 'gone',
            locked_at = now() - interval '5 hours' where id = %s""",
            [job.id],
        )
        app.run_once(install_signal_handlers=False)  # resets stale locks before it fetches
    assert events.seen[:2] == [("reset_locked_started", None), ("reset_locked_finished", None)]
    assert ran == [1]


@pytest.mark.gw("EV-06")
def test_a_failed_stale_lock_reset_is_reported(database_url: str, opened: App) -> None:
    events = Events()
    missing = Store(opened.pool, "pgw_no_such_schema")
    sweeper = Sweeper(missing, database_url, Recovery(), Hooks([events]))
    try:
        sweeper.reset_stale_locks()
    finally:
        sweeper.close()
    assert events.names() == ["reset_locked_started", "reset_locked_finished"]
    error = events.seen[1][1]
    assert error is not None
    assert "'pgw_no_such_schema' is not installed" in error


# -- use_local_time (graphile-worker's useNodeTime) -------------------------------------


@pytest.mark.parametrize("use_local_time", [True, False])
@pytest.mark.gw("ADD-06", "AJ-07", "EDGE-07")
def test_use_local_time_gives_a_deferred_job_this_process_s_now(
    make_app: Callable[..., App], use_local_time: bool
) -> None:
    """In a transaction that began a while ago, the database's now() is its start: a
    visible difference from this process's clock when the job is added."""
    app = make_app(use_local_time=use_local_time)
    with app:
        app.migrate()
        with app.pool.connection() as conn, conn.transaction():
            began = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
            conn.execute("select pg_sleep(0.3)")
            before = datetime.now(UTC)
            job = app.defer("anything", {}, conn=conn)
            (batched,) = app.defer_raw([RawJob("anything", {})], conn=conn)
            after = datetime.now(UTC)
    for added in (job, batched):
        if use_local_time:
            assert before <= added.run_at <= after
        else:
            assert added.run_at == began


@pytest.mark.parametrize("use_local_time", [True, False])
@pytest.mark.gw("F-07", "F-08", "EDGE-07")
def test_use_local_time_fetches_by_this_process_s_clock(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch, use_local_time: bool
) -> None:
    """F-07/F-08: a job due in 30 minutes by the database's clock runs at once when the
    worker's clock says it is an hour later, and only with use_local_time."""
    monkeypatch.setattr(pgworker.fetcher, "local_time", lambda: datetime.now(UTC) + HOUR)
    app = make_app(use_local_time=use_local_time)
    ran: list[int] = []

    @app.task("later")
    def later(payload: dict[str, Any]) -> None:
        ran.append(1)

    with app:
        app.migrate()
        app.defer("later", {}, delay=timedelta(minutes=30))
        app.run_once(install_signal_handlers=False)
    assert ran == ([1] if use_local_time else [])


# -- the crontab example (the Rust tour's examples/crontab.rs) --------------------------


def test_the_crontab_example_backfills_say_hello_after_downtime(example_database: str) -> None:
    """The example's say_hello item backfills 10 minutes: a worker that was down for the
    last 9 makes up an even minute at once, instead of waiting for the next one."""
    with App(database_url=example_database) as setup:
        setup.migrate()
        with psycopg.connect(example_database, autocommit=True) as conn:
            conn.execute(
                f"""insert into "{setup.schema}"._private_known_crontabs
                (identifier, known_since, last_execution)
                values ('say_hello', now() - interval '1 day', now() - interval '9 minutes')"""
            )
    proc = run_example("crontab", example_database)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: "Hello Crontab!\n" in lines,
            20,
            "a backfilled say_hello",
            detail=lambda: "".join(lines),
        )
        with psycopg.connect(example_database, autocommit=True) as conn:
            known = conn.execute(
                f'select identifier from "{setup.schema}"._private_known_crontabs'
            ).fetchall()
        assert sorted(known) == [("say_hello",), ("weekday-report",)]
        proc.send_signal(signal.SIGINT)
        # The detail shows how far the shutdown got, if it takes too long (seen once
        # under a loaded machine, and not reproduced since).
        wait_for(
            lambda: proc.poll() is not None,
            30,
            "the example to exit after SIGINT",
            detail=lambda: "".join(lines),
        )
        assert proc.returncode == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        stdout.close()
