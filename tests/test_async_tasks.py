"""Workers running ``async def`` tasks on their event loop: outcomes, hooks, slots, queues,
shutdown, and the awaitable defer."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from click.testing import CliRunner
from processes import wait_for

from pgworker import App, ConfigurationError, Job, JobContext, JobResult, Plugin, Skip
from pgworker.aio import AsyncRunner
from pgworker.cli import cli
from pgworker.hooks import BeforeRun

Conn = psycopg.Connection[tuple[Any, ...]]

INTERRUPTED = "Job recovered after worker interruption"


class Greeting(msgspec.Struct):
    message: str
    times: int = 1


def job_rows(db: Conn, schema: str) -> list[tuple[Any, ...]]:
    return db.execute(
        f"select id, task_identifier, attempts, last_error, locked_by "
        f'from "{schema}".jobs order by id'
    ).fetchall()


def test_an_async_task_is_awaited_on_the_event_loop(opened: App, db: Conn, schema: str) -> None:
    seen: list[tuple[object, int, int, str]] = []

    @opened.task("greet")
    async def greet(payload: Greeting, ctx: JobContext) -> None:
        await asyncio.sleep(0.01)
        thread = threading.current_thread().name
        seen.append((payload, ctx.job.id, ctx.job.attempts, thread))

    job = greet.defer(Greeting(message="hi", times=2))
    opened.run_once()
    [(payload, job_id, attempts, thread)] = seen
    assert (payload, job_id, attempts) == (Greeting(message="hi", times=2), job.id, 1)
    assert thread.endswith("-async-loop")
    assert job_rows(db, schema) == []


def test_a_failing_async_task_is_retried_like_a_sync_one(
    opened: App, db: Conn, schema: str
) -> None:
    @opened.task("flaky")
    async def flaky(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    job = flaky.defer({}, max_attempts=3)
    opened.run_once()
    assert job_rows(db, schema) == [(job.id, "flaky", 1, "RuntimeError: boom", None)]
    delay = db.execute(
        f'select extract(epoch from run_at - now()) from "{schema}"._private_jobs where id = %s',
        (job.id,),
    ).fetchone()
    assert delay is not None
    assert 1.0 < float(delay[0]) <= 2.72  # exp(1): graphile-worker's backoff


class Recorder(Plugin):
    """Records every job hook call as (hook, job key), and the threads they ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def record(self, hook: str, job: Job) -> None:
        with self.lock:
            self.events.append((hook, job.key))
            self.threads.add(threading.current_thread().name)

    def on_job_fetched(self, job: Job) -> None:
        self.record("fetched", job)

    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        self.record("before_run", job)
        time.sleep(0.01)  # hooks may block: not on the event loop
        return None

    def on_job_started(self, job: Job) -> None:
        self.record("started", job)

    def after_job_run(self, job: Job, result: JobResult) -> None:
        self.record("after_run", job)

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        self.record("completed", job)

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        self.record("failed_retrying" if will_retry else "failed_final", job)


def test_plugin_hooks_fire_in_the_sync_order_and_never_on_the_loop(
    make_app: Callable[..., App],
) -> None:
    recorder = Recorder()
    app = make_app(plugins=[recorder])

    @app.task("work")
    async def work(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        if payload.get("raise"):
            raise RuntimeError("task failed")

    with app:
        app.migrate()
        app.defer("work", {}, job_key="ok")
        app.defer("work", {"raise": True}, job_key="retry", max_attempts=3)
        app.run_once()
    ran = ["fetched", "before_run", "started", "after_run"]
    assert [hook for hook, key in recorder.events if key == "ok"] == [*ran, "completed"]
    assert [hook for hook, key in recorder.events if key == "retry"] == [*ran, "failed_retrying"]
    assert not any(name.endswith("-async-loop") for name in recorder.threads)


def test_200_async_sleeps_share_one_worker_with_4_threads(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=4)
    active = 0
    most = 0

    @app.task("nap")
    async def nap(payload: dict[str, int]) -> None:
        nonlocal active, most
        active += 1  # the loop thread only: no lock needed
        most = max(most, active)
        await asyncio.sleep(1)
        active -= 1

    with app:
        app.migrate()
        nap.defer_many([{"n": n} for n in range(200)])
        started = time.monotonic()
        app.run_once()
        elapsed = time.monotonic() - started
        assert app.admin.jobs() == []
    print(f"200 async sleeps of 1 s: {elapsed:.2f} s, at most {most} at once")
    assert most == 100  # async_concurrency, far past concurrency=4
    assert elapsed < 10


def test_a_mixed_app_drains_sync_and_async_jobs(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=2, async_concurrency=5)
    done: list[str] = []
    lock = threading.Lock()

    @app.task("sync_job")
    def sync_job(payload: dict[str, int]) -> None:
        time.sleep(0.01)
        with lock:
            done.append(f"sync-{payload['n']}")

    @app.task("async_job")
    async def async_job(payload: dict[str, int]) -> None:
        await asyncio.sleep(0.01)
        with lock:
            done.append(f"async-{payload['n']}")

    with app:
        app.migrate()
        sync_job.defer_many([{"n": n} for n in range(20)])
        async_job.defer_many([{"n": n} for n in range(20)])
        app.run_once()
        assert app.admin.jobs() == []
    expected = [f"{kind}-{n}" for kind in ("sync", "async") for n in range(20)]
    assert sorted(done) == sorted(expected)


def test_a_named_queue_stays_serial_across_async_and_sync_jobs(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=4)
    active: dict[str, int] = {}
    overlaps: list[str] = []
    order: list[int] = []
    lock = threading.Lock()

    def enter(ctx: JobContext, n: int) -> str:
        queue = ctx.job.queue_name or "-"
        with lock:
            active[queue] = active.get(queue, 0) + 1
            if active[queue] > 1:
                overlaps.append(queue)
            if queue == "serial":
                order.append(n)
        return queue

    def leave(queue: str) -> None:
        with lock:
            active[queue] -= 1

    @app.task("serial_async")
    async def serial_async(payload: dict[str, int], ctx: JobContext) -> None:
        queue = enter(ctx, payload["n"])
        await asyncio.sleep(0.02)
        leave(queue)

    @app.task("serial_sync")
    def serial_sync(payload: dict[str, int], ctx: JobContext) -> None:
        queue = enter(ctx, payload["n"])
        time.sleep(0.02)
        leave(queue)

    with app:
        app.migrate()
        for n in range(10):
            task = serial_async if n % 3 else serial_sync
            task.defer({"n": n}, queue="serial")
            serial_async.defer({"n": n}, queue="other")
        app.run_once()
    assert overlaps == []
    assert sorted(order) == list(range(10))


def test_a_graceful_stop_waits_for_a_running_async_job(opened: App, db: Conn, schema: str) -> None:
    started = threading.Event()
    finished: list[int] = []

    @opened.task("slow")
    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(1)
        finished.append(ctx.job.id)

    job = slow.defer({})
    handle = opened.start()
    assert started.wait(5)
    handle.stop(timeout=10)
    assert finished == [job.id]
    assert job_rows(db, schema) == []


@pytest.mark.parametrize("handle_recorded_late", [False, True])
def test_a_forced_stop_cancels_the_coroutine_and_gives_the_job_back(
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    handle_recorded_late: bool,
) -> None:
    """With ``handle_recorded_late``, the coroutine starts on the loop's thread before
    the steps thread records its handle, and the forced stop comes in between (the steps
    thread is held back here until then): it must still cancel the coroutine."""
    app = make_app(interrupted_retry_delay=0)
    started = threading.Event()
    unwound = threading.Event()
    if handle_recorded_late:
        submit = AsyncRunner.submit

        def slow_to_record(self: AsyncRunner, *args: Any, **kwargs: Any) -> Any:
            handle = submit(self, *args, **kwargs)
            started.wait(5)
            time.sleep(0.5)  # the forced stop runs meanwhile
            return handle

        monkeypatch.setattr(AsyncRunner, "submit", slow_to_record)

    @app.task("long")
    async def long(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            unwound.set()

    with app:
        app.migrate()
        job = long.defer({})
        handle = app.start()
        assert started.wait(5)
        handle.stop(force=True)
        assert unwound.wait(5), "the coroutine was not cancelled"
        wait_for(lambda: job_rows(db, schema)[0][4] is None, 5, "the job to be unlocked")
        assert handle.worker.wait_finished(5)
    # Given back with the attempt refunded, as the exit path gives back sync jobs.
    assert job_rows(db, schema) == [(job.id, "long", 0, INTERRUPTED, None)]


def test_a_forced_stop_keeps_a_still_running_coroutine_locked(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app()
    started = threading.Event()
    runs: list[str] = []

    @app.task("stubborn")
    async def stubborn(payload: dict[str, Any], ctx: JobContext) -> None:
        runs.append(ctx.worker_id)
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(1.5)  # cleans up for a while before it returns

    with app:
        app.migrate()
        job = stubborn.defer({})
        first = app.start()
        assert started.wait(5)
        first.stop(force=True)
        # Cancelled, but still unwinding: still locked by its worker.
        assert job_rows(db, schema) == [(job.id, "stubborn", 1, None, first.worker_id)]
        app.run_once()  # another worker: the job is locked, so it does not run
        assert runs == [first.worker_id]
        assert first.worker.wait_finished(10)
    # It returned normally after the cancellation: recorded as completed.
    assert job_rows(db, schema) == []


def test_adefer_enqueues_from_async_code(opened: App, db: Conn, schema: str) -> None:
    done: list[str] = []

    @opened.task("follow_up")
    def follow_up(payload: Greeting) -> None:
        done.append(payload.message)

    @opened.task("first")
    async def first(payload: Greeting, ctx: JobContext) -> None:
        await follow_up.adefer(Greeting(message=f"after {payload.message}"))

    async def handler() -> list[Job]:
        return [
            await first.adefer(Greeting(message="web")),
            await opened.adefer("follow_up", {"message": "by name"}, priority=-1),
        ]

    jobs = asyncio.run(handler())
    assert [j.task_identifier for j in jobs] == ["first", "follow_up"]
    with pytest.raises(Exception, match="message"):
        asyncio.run(follow_up.adefer({"wrong": 1}))  # checked like defer
    opened.run_once()
    assert sorted(done) == ["after web", "by name"]
    assert job_rows(db, schema) == []


class SkipAll(Plugin):
    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        return Skip()


def test_a_job_a_plugin_skips_frees_its_loop_slot(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(plugins=[SkipAll()], async_concurrency=1)
    called: list[int] = []

    @app.task("skipped")
    async def skipped(payload: dict[str, int]) -> None:
        called.append(payload["n"])

    with app:
        app.migrate()
        skipped.defer_many([{"n": n} for n in range(3)])
        app.run_once()  # with a leaked slot, the second job would never be claimed
    assert called == []
    assert job_rows(db, schema) == []


def test_async_concurrency_is_validated_and_configurable() -> None:
    with pytest.raises(ConfigurationError, match="async_concurrency must be positive"):
        App(async_concurrency=0)
    app = App()
    assert app.async_concurrency == 100
    assert app.configure(async_concurrency=7).async_concurrency == 7
    with pytest.raises(ConfigurationError, match="async_concurrency must be positive"):
        app.configure(async_concurrency=-1)


def test_the_cli_sets_async_concurrency(
    database_url: str,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"async_cli_app_{schema}"
    (tmp_path / f"{module}.py").write_text(
        "import asyncio\n"
        "from pgworker import App\n"
        "app = App()\n"
        "seen = []\n"
        "@app.task('nap')\n"
        "async def nap(payload: dict) -> None:\n"
        "    await asyncio.sleep(0)\n"
        "    seen.append(app.async_concurrency)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--database-url", database_url, "--schema", schema]
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate", *common]).exit_code == 0
    assert runner.invoke(cli, ["defer", "nap", "{}", *common]).exit_code == 0
    result = runner.invoke(
        cli, ["run", f"{module}:app", "--once", "--async-concurrency", "3", *common]
    )
    assert result.exit_code == 0, result.output
    assert importlib.import_module(module).seen == [3]
