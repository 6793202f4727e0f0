"""Plugins: every hook fires in order, interceptors decide, and a failing plugin changes
nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from pgworker import (
    App,
    Complete,
    DeferRejected,
    DeferSkipped,
    Fail,
    Job,
    JobResult,
    Plugin,
    RawJob,
    Reject,
    RewritePayload,
    Skip,
)
from pgworker.cron import Cron, CronScheduler
from pgworker.hooks import BeforeDefer, BeforeRun, Hooks
from pgworker.spec import JobSpec

Conn = psycopg.Connection[tuple[Any, ...]]


class Recorder(Plugin):
    """Records every hook call as (hook, job name or None)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def record(self, hook: str, job: Job | None = None) -> None:
        with self.lock:
            self.events.append((hook, None if job is None else job.key))

    def on_worker_init(self, worker: Any) -> None:
        self.record("worker_init")

    def on_worker_start(self, worker: Any) -> None:
        self.record("worker_start")

    def on_worker_shutdown(self, worker: Any) -> None:
        self.record("worker_shutdown")

    def on_job_fetched(self, job: Job) -> None:
        self.record("fetched", job)

    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        self.record("before_run", job)
        if payload.get("skip"):
            return Skip()
        if payload.get("refuse"):
            return Fail("refused by plugin")
        return None

    def on_job_started(self, job: Job) -> None:
        self.record("started", job)

    def after_job_run(self, job: Job, result: JobResult) -> Complete | Fail | None:
        self.record("after_run", job)
        return None

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        self.record("completed", job)

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        self.record("failed_retrying" if will_retry else "failed_final", job)

    def on_job_permanently_failed(self, job: Job, error: str) -> None:
        self.record("permanently_failed", job)


def events_of(recorder: Recorder, key: str) -> list[str]:
    return [hook for hook, job in recorder.events if job == key]


def make_work_app(make_app: Callable[..., App], *plugins: Plugin) -> App:
    app = make_app(plugins=list(plugins), concurrency=2)

    @app.task("work")
    def work(payload: dict[str, Any]) -> None:
        if payload.get("raise"):
            raise RuntimeError("task failed")

    return app


@pytest.mark.gw("EV-08", "EV-09", "LQ-21", "SH-05")
def test_every_hook_fires_in_order(make_app: Callable[..., App], db: Conn, schema: str) -> None:
    recorder = Recorder()
    app = make_work_app(make_app, recorder)
    with app:
        app.migrate()
        app.defer("work", {}, job_key="ok")
        app.defer("work", {"raise": True}, job_key="retry", max_attempts=3)
        app.defer("work", {"raise": True}, job_key="dead", max_attempts=1)
        app.defer("work", {"skip": True}, job_key="skipped")
        app.defer("work", {"refuse": True}, job_key="refused", max_attempts=2)
        app.run_once()
    assert recorder.events[:2] == [("worker_init", None), ("worker_start", None)]
    assert recorder.events[-1] == ("worker_shutdown", None)
    ran = ["fetched", "before_run", "started", "after_run"]
    assert events_of(recorder, "ok") == [*ran, "completed"]
    assert events_of(recorder, "retry") == [*ran, "failed_retrying"]
    assert events_of(recorder, "dead") == [*ran, "failed_final", "permanently_failed"]
    assert events_of(recorder, "skipped") == ["fetched", "before_run", "completed"]
    assert events_of(recorder, "refused") == ["fetched", "before_run", "failed_retrying"]
    remaining = dict(db.execute(f'select key, last_error from "{schema}".jobs').fetchall())
    assert remaining == {
        "retry": "RuntimeError: task failed",
        "dead": "RuntimeError: task failed",
        "refused": "refused by plugin",
    }


class Verdict(Plugin):
    """Turns failures into successes and successes into failures."""

    def after_job_run(self, job: Job, result: JobResult) -> Complete | Fail | None:
        if result.error is not None:
            assert isinstance(result.exception, RuntimeError)
            return Complete()
        return Fail("success overruled")


@pytest.mark.gw("EV-10")
def test_after_job_run_decides_the_outcome(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_work_app(make_app, Verdict())
    with app:
        app.migrate()
        app.defer("work", {"raise": True}, job_key="failing")
        app.defer("work", {}, job_key="passing")
        app.run_once()
    remaining = db.execute(f'select key, last_error from "{schema}".jobs').fetchall()
    assert remaining == [("passing", "success overruled")]


class Gatekeeper(Plugin):
    def before_defer(self, identifier: str, payload: Any, spec: JobSpec) -> BeforeDefer:
        if payload.get("secret"):
            return RewritePayload({**payload, "secret": "***"})
        if payload.get("spam"):
            return Skip()
        if identifier == "forbidden":
            return Reject("not on my watch")
        return None


@pytest.mark.gw("EV-11")
def test_before_defer_rewrites_skips_and_rejects(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_work_app(make_app, Gatekeeper())
    with app:
        app.migrate()
        app.defer("work", {"secret": "hunter2"})
        with pytest.raises(DeferSkipped):
            app.defer("work", {"spam": True})
        with pytest.raises(DeferRejected, match="not on my watch"):
            app.defer("forbidden", {})
        jobs = app.defer_raw(
            [RawJob("work", {"secret": "x"}), RawJob("work", {"spam": True}), RawJob("work")]
        )
        assert len(jobs) == 2  # the skipped one is left out
        with pytest.raises(DeferRejected):
            app.defer_raw([RawJob("work", {"n": 1}), RawJob("forbidden")])
    payloads = [
        r[0] for r in db.execute(f'select payload from "{schema}"._private_jobs order by id')
    ]
    assert payloads == [{"secret": "***"}, {"secret": "***"}, {}]


class Broken(Plugin):
    """Raises in every hook (the methods are added below)."""


def _exploding(hook: str) -> Callable[..., Any]:
    def explode(self: Plugin, *args: Any) -> Any:
        raise RuntimeError(f"{hook} exploded")

    return explode


for _hook in [h for h in vars(Plugin) if h.startswith(("on_", "before_", "after_"))]:
    setattr(Broken, _hook, _exploding(_hook))


def test_a_plugin_that_raises_changes_nothing(
    make_app: Callable[..., App], db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    app = make_work_app(make_app, Broken(), recorder)
    with app:
        app.migrate()
        app.defer("work", {}, job_key="ok")
        app.defer("work", {"raise": True}, job_key="retry")
        app.run_once()
    remaining = db.execute(f'select key, attempts from "{schema}".jobs').fetchall()
    assert remaining == [("retry", 1)]
    assert events_of(recorder, "ok")[-1] == "completed"
    assert events_of(recorder, "retry")[-1] == "failed_retrying"
    failures = [r.getMessage() for r in caplog.records if "Plugin Broken failed" in r.getMessage()]
    for hook in ("on_worker_start", "before_job_run", "after_job_run", "on_job_completed"):
        assert any(f"in {hook}" in message for message in failures), hook
    assert any("in before_defer" in message for message in failures)


class Lifecycle(Plugin):
    """Records the hooks the other tests don't reach: interruption and cron."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_job_interrupted(self, job: Job, reason: str) -> None:
        self.events.append(("interrupted", job.key, reason))

    def on_cron_tick(self, moment: datetime) -> None:
        self.events.append(("tick", moment))

    def on_cron_job_scheduled(self, identifier: str, moment: datetime, job_id: int) -> None:
        self.events.append(("scheduled", identifier, moment, job_id))


@pytest.mark.gw("SH-10", "LQ-23")
def test_interrupted_jobs_are_reported(make_app: Callable[..., App]) -> None:
    lifecycle = Lifecycle()
    app = make_app(plugins=[lifecycle])
    started, release = threading.Event(), threading.Event()

    @app.task("long")
    def long(payload: dict[str, Any]) -> None:
        started.set()
        release.wait(30)

    with app:
        app.migrate()
        job = app.defer("long", {}, job_key="cut")
        handle = app.start()
        assert started.wait(5)
        handle.stop(force=True)
        assert lifecycle.events == [("interrupted", "cut", "shutdown")]
        # The job still runs: once it returns, its outcome is recorded as usual.
        release.set()
        assert handle.worker.wait_finished(10)
        assert app.admin.job(job.id) is None


@pytest.mark.gw("CRS-15", "EV-07")
def test_cron_ticks_and_scheduled_jobs_are_reported(opened: App, db: Conn, schema: str) -> None:
    lifecycle = Lifecycle()
    item = Cron.every_minute("report").build()
    scheduler = CronScheduler(opened.store, [item], hooks=Hooks([lifecycle]))
    minute = datetime(2030, 1, 1, 4, 30, tzinfo=UTC)
    scheduler.schedule_minute(minute)
    scheduler.schedule_minute(minute)  # the same minute again: no second job
    [(job_id,)] = db.execute(f'select id from "{schema}".jobs').fetchall()
    assert lifecycle.events == [
        ("tick", minute),
        ("scheduled", "report", minute, job_id),
        ("tick", minute),
    ]


class Stuck(Plugin):
    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        threading.Event().wait(30)  # a hook that hangs (a call with no timeout)


def test_a_stuck_hook_does_not_hold_a_forced_stop(make_app: Callable[..., App]) -> None:
    app = make_work_app(make_app, Stuck())
    with app:
        app.migrate()
        app.defer("work", {"raise": True})
        handle = app.start()
        deadline = time.monotonic() + 5
        while app.admin.jobs(state="retrying") == []:  # recorded; the hook now hangs
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        handle.stop(timeout=0.5, force=True)
        assert time.monotonic() - started < 8


class WrongType(Plugin):
    def before_job_run(self, job: Job, payload: Any) -> Any:
        return Complete()  # not a before_job_run decision


def test_a_wrong_decision_type_is_ignored(
    make_app: Callable[..., App], caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    app = make_work_app(make_app, WrongType(), recorder)
    with app:
        app.migrate()
        app.defer("work", {}, job_key="ran")
        app.run_once()
    assert events_of(recorder, "ran")[-1] == "completed"
    assert "started" in events_of(recorder, "ran")  # the job ran, and the next plugin was asked
    assert "returned Complete() from before_job_run" in caplog.text
