"""Task controls: Retry, Snooze, PermanentFailure and per-item batch results from inside a
task (sync and async), a task's own backoff and defaults, and defer(delay=...)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgworker import (
    App,
    BatchResult,
    ConfigurationError,
    Job,
    JobContext,
    JobResult,
    PermanentFailure,
    Plugin,
    RawJob,
    Retry,
    Snooze,
)

Conn = psycopg.Connection[tuple[Any, ...]]
Body = Callable[[Any, JobContext], Any]

pytestmark = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])


class Recorder(Plugin):
    """Remembers the outcome hooks a worker calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.results: list[JobResult] = []

    def after_job_run(self, job: Job, result: JobResult) -> None:
        self.results.append(result)

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        self.events.append(("completed", job.task_identifier))

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        self.events.append(("failed", job.task_identifier, str(will_retry)))

    def on_job_permanently_failed(self, job: Job, error: str) -> None:
        self.events.append(("permanently_failed", job.task_identifier))


def register(app: App, identifier: str, body: Body, is_async: bool, **options: Any) -> None:
    """Register ``body`` as the task ``identifier``, as a def or an async def."""
    if is_async:

        @app.task(identifier, **options)
        async def run_async(payload: Any, ctx: JobContext) -> Any:
            await asyncio.sleep(0)
            return body(payload, ctx)

    else:

        @app.task(identifier, **options)
        def run_sync(payload: Any, ctx: JobContext) -> Any:
            return body(payload, ctx)


def row(db: Conn, schema: str, job_id: int) -> dict[str, Any]:
    """A job's row as graphile-worker stores it, with run_at as seconds from now."""
    cur = db.execute(
        "select attempts, max_attempts, last_error, locked_by, locked_at, is_available, "
        "payload, json_typeof(payload) as payload_type, "
        "extract(epoch from run_at - now())::float8 as wait "
        f'from "{schema}"._private_jobs where id = %s',
        (job_id,),
    )
    names = [c.name for c in cur.description or ()]
    found = cur.fetchone()
    assert found is not None, f"job {job_id} is gone"
    return dict(zip(names, found, strict=True))


def is_gone(db: Conn, schema: str, job_id: int) -> bool:
    query = f'select count(*) from "{schema}"._private_jobs where id = %s'
    found = db.execute(query, (job_id,)).fetchone()
    return found == (0,)


def make_opened(make_app: Callable[..., App], **options: Any) -> tuple[App, Recorder]:
    recorder = Recorder()
    app = make_app(plugins=[recorder], **options)
    app.open()
    app.migrate()
    return app, recorder


def raising(exc: BaseException) -> Body:
    def body(payload: Any, ctx: JobContext) -> Any:
        raise exc

    return body


# -- PermanentFailure ---------------------------------------------------------------------


def test_permanent_failure_uses_up_every_attempt(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, recorder = make_opened(make_app)
    register(app, "charge", raising(PermanentFailure("card declined")), is_async)
    job = app.defer("charge", {}, queue="payments")
    app.run_once()
    found = row(db, schema, job.id)
    assert found["attempts"] == found["max_attempts"] == 25
    assert found["last_error"] == "PermanentFailure: card declined"
    # Unlocked, and never fetched again: graphile-worker's is_available says so too.
    assert (found["locked_by"], found["locked_at"], found["is_available"]) == (None, None, False)
    assert recorder.events == [
        ("failed", "charge", "False"),
        ("permanently_failed", "charge"),
    ]
    assert isinstance(recorder.results[0].exception, PermanentFailure)
    queue = db.execute(f'select locked_by from "{schema}"._private_job_queues').fetchall()
    assert queue == [(None,)]


def test_a_control_without_a_reason_describes_its_cause(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, _ = make_opened(make_app)

    def body(payload: Any, ctx: JobContext) -> Any:
        try:
            raise KeyError("user 7")
        except KeyError as exc:
            raise PermanentFailure() from exc

    register(app, "lookup", body, is_async)
    job = app.defer("lookup", {})
    app.run_once()
    assert row(db, schema, job.id)["last_error"] == "PermanentFailure: KeyError: 'user 7'"


# -- Snooze -------------------------------------------------------------------------------


def test_snooze_refunds_the_attempt_and_keeps_last_error(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, recorder = make_opened(make_app)
    register(app, "poll", raising(Snooze(60, reason="not ready")), is_async)
    job = app.defer("poll", {})
    db.execute(
        f"update \"{schema}\"._private_jobs set attempts = 3, last_error = 'RuntimeError: boom' "
        "where id = %s",
        (job.id,),
    )
    app.run_once()
    found = row(db, schema, job.id)
    assert found["attempts"] == 3  # the run's attempt refunded
    assert found["last_error"] == "RuntimeError: boom"
    assert 58 < found["wait"] <= 60
    assert found["locked_by"] is None
    assert recorder.events == []  # not a failure, not a success
    [result] = recorder.results
    assert result.error is None
    assert isinstance(result.exception, Snooze)


def test_snooze_until_a_time_on_the_last_attempt(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, recorder = make_opened(make_app)
    wake = datetime.now(UTC) + timedelta(hours=2)
    register(app, "poll", raising(Snooze(run_at=wake)), is_async)
    job = app.defer("poll", {}, max_attempts=1)
    app.run_once()
    found = row(db, schema, job.id)
    assert (found["attempts"], found["last_error"], found["is_available"]) == (0, None, True)
    run_at = db.execute(
        f'select run_at from "{schema}"._private_jobs where id = %s', (job.id,)
    ).fetchone()
    assert run_at == (wake,)
    assert recorder.events == []


# -- Retry --------------------------------------------------------------------------------


def test_retry_after_a_delay_counts_the_attempt(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, recorder = make_opened(make_app)
    register(app, "fetch", raising(Retry("rate limited", delay=timedelta(minutes=5))), is_async)
    job = app.defer("fetch", {})
    app.run_once()
    found = row(db, schema, job.id)
    assert (found["attempts"], found["last_error"]) == (1, "Retry: rate limited")
    assert 298 < found["wait"] <= 300
    assert recorder.events == [("failed", "fetch", "True")]


def test_retry_at_a_time_on_the_last_attempt_fails_for_good(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, recorder = make_opened(make_app)
    at = datetime.now(UTC) + timedelta(days=1)
    register(app, "fetch", raising(Retry(run_at=at)), is_async)
    job = app.defer("fetch", {}, max_attempts=1)
    app.run_once()
    found = row(db, schema, job.id)
    assert (found["attempts"], found["last_error"]) == (1, "Retry")
    assert 86398 < found["wait"] <= 86400
    assert recorder.events == [("failed", "fetch", "False"), ("permanently_failed", "fetch")]


def test_controls_check_their_arguments(is_async: bool) -> None:
    with pytest.raises(ConfigurationError, match="a delay or a run_at"):
        Snooze()
    with pytest.raises(ConfigurationError, match="a delay or a run_at"):
        Retry("x", delay=1, run_at=datetime.now(UTC))
    with pytest.raises(ConfigurationError, match=">= 0"):
        Snooze(-1)
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        Retry(run_at=datetime(2030, 1, 1))  # a naive time: refused
    with pytest.raises(TypeError, match="None for a success"):
        BatchResult(["ok"])  # type: ignore[list-item]


def test_a_timed_out_job_stays_timed_out_whatever_it_raises(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, _ = make_opened(make_app)
    if is_async:

        @app.task("slow", timeout=0.3)
        async def slow_async(payload: Any) -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise Snooze(3600) from None

    else:

        @app.task("slow", timeout=0.3)
        def slow_sync(payload: Any, ctx: JobContext) -> None:
            ctx.wait(30)
            raise Snooze(3600)

    job = app.defer("slow", {})
    app.run_once()
    found = row(db, schema, job.id)
    assert found["attempts"] == 1  # counted: not snoozed
    assert found["last_error"].startswith("Timed out after 0.3 s (Snooze")
    assert found["wait"] < 10  # graphile-worker's backoff, not the snooze


# -- a task's own backoff and defaults ----------------------------------------------------


def test_a_tasks_backoff_replaces_graphile_workers(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, _ = make_opened(make_app)
    register(app, "flaky", raising(RuntimeError("boom")), is_async, backoff=lambda n: 100 * n)
    register(
        app,
        "flaky_td",
        raising(RuntimeError("boom")),
        is_async,
        backoff=lambda n: timedelta(hours=n),
    )
    register(app, "plain", raising(RuntimeError("boom")), is_async)
    jobs = {name: app.defer(name, {}).id for name in ("flaky", "flaky_td", "plain")}
    db.execute(f'update "{schema}"._private_jobs set attempts = 2')
    app.run_once()
    waits = {name: row(db, schema, job_id)["wait"] for name, job_id in jobs.items()}
    assert 298 < waits["flaky"] <= 300  # attempt 3
    assert 3 * 3600 - 2 < waits["flaky_td"] <= 3 * 3600
    assert math.exp(3) - 2 < waits["plain"] <= math.exp(3)


def test_a_backoff_that_fails_at_run_time_falls_back_to_the_default(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, _ = make_opened(make_app)
    register(
        app,
        "flaky",
        raising(RuntimeError("boom")),
        is_async,
        backoff=lambda n: 5 if n == 1 else 1 / 0,  # fine at registration, not at attempt 2
    )
    job = app.defer("flaky", {})
    db.execute(f'update "{schema}"._private_jobs set attempts = 1')
    app.run_once()
    assert math.exp(2) - 2 < row(db, schema, job.id)["wait"] <= math.exp(2)


def test_a_backoff_is_checked_at_registration(make_app: Callable[..., App], is_async: bool) -> None:
    app = make_app()
    body = raising(RuntimeError())
    with pytest.raises(ConfigurationError, match="must be a function"):
        register(app, "a", body, is_async, backoff=30)
    with pytest.raises(ConfigurationError, match="returned -1"):
        register(app, "b", body, is_async, backoff=lambda n: -1)
    with pytest.raises(ConfigurationError, match="raised ZeroDivisionError"):
        register(app, "c", body, is_async, backoff=lambda n: n / 0)
    assert app.tasks == {}


def test_defer_overrides_the_decorators_defaults(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, _ = make_opened(make_app)
    register(app, "mail", raising(RuntimeError()), is_async, queue="q", priority=3, max_attempts=2)
    default = app.defer("mail", {})
    overridden = app.tasks["mail"].defer({}, queue="other", priority=-1, max_attempts=9)
    got = db.execute(
        f'select id, queue_name, priority, max_attempts from "{schema}".jobs order by id'
    ).fetchall()
    assert got == [(default.id, "q", 3, 2), (overridden.id, "other", -1, 9)]


# -- defer(delay=...) ---------------------------------------------------------------------


def test_defer_with_a_delay_everywhere(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    app, _ = make_opened(make_app)
    register(app, "later", raising(RuntimeError()), is_async)
    task = app.tasks["later"]
    ids = [
        task.defer({}, delay=60).id,
        task.defer({}, delay=timedelta(minutes=1)).id,
        app.defer("later", {}, delay=60.0).id,
        asyncio.run(task.adefer({}, delay=60)).id,
        asyncio.run(app.adefer("later", {}, delay=60)).id,
        *(job.id for job in task.defer_many([{}, {}], delay=60)),
        *(job.id for job in app.defer_raw([RawJob("later", {}, delay=60)])),
    ]
    assert len(ids) == 8
    for job_id in ids:
        assert 57 < row(db, schema, job_id)["wait"] <= 60, job_id


def test_a_delay_is_checked(make_app: Callable[..., App], is_async: bool) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="run_at or delay, not both"):
        app.defer("x", {}, delay=5, run_at=datetime.now(UTC))
    with pytest.raises(ConfigurationError, match=">= 0"):
        app.defer("x", {}, delay=-1)
    with pytest.raises(ConfigurationError, match=">= 0"):
        app.defer_raw([RawJob("x", delay=timedelta(seconds=-1))])
    with pytest.raises(ConfigurationError, match="seconds"):
        app.defer("x", {}, delay="5")  # type: ignore[arg-type]


# -- batch jobs with per-item results -----------------------------------------------------


def per_item(payload: list[dict[str, int]], ctx: JobContext) -> BatchResult:
    """Items with an odd "a" fail."""
    return BatchResult(
        ValueError(f"odd {item['a']}") if item["a"] % 2 else None for item in payload
    )


@pytest.mark.gw("BJ-01", "BJ-04", "BJ-05", "BJ-07")
def test_only_the_failed_items_of_a_batch_are_retried(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    """graphile-worker behaviours BJ-04, BJ-05, BJ-07."""
    app, recorder = make_opened(make_app)
    register(app, "job3", per_item, is_async)
    # Node's array merging under one job key builds the batch (BJ-01).
    for n in (1, 2, 3, 4):
        app.defer("job3", [{"a": n, "extra": "kept as sent"}], job_key="mykey")
    job_id = db.execute(f'select id from "{schema}"._private_jobs').fetchone()
    assert job_id is not None
    app.run_once()
    found = row(db, schema, job_id[0])
    assert found["payload"] == [
        {"a": 1, "extra": "kept as sent"},
        {"a": 3, "extra": "kept as sent"},
    ]
    assert found["payload_type"] == "array"
    assert found["attempts"] == 1
    assert found["last_error"] == "2 of 4 batch items failed:\nValueError: odd 1\nValueError: odd 3"
    assert (found["locked_by"], found["locked_at"]) == (None, None)
    assert recorder.events == [("failed", "job3", "True")]


@pytest.mark.gw("BJ-02", "BJ-11")
def test_a_batch_whose_items_all_succeed_completes(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    """graphile-worker behaviours BJ-02."""
    app, recorder = make_opened(make_app)
    register(app, "job3", per_item, is_async)
    job = app.defer("job3", [{"a": 2}, {"a": 4}])
    app.run_once()
    assert is_gone(db, schema, job.id)
    assert recorder.events == [("completed", "job3")]


@pytest.mark.gw("BJ-06", "BJ-09")
def test_a_result_of_the_wrong_length_fails_the_whole_batch(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    """graphile-worker behaviours BJ-06."""
    app, _ = make_opened(make_app)
    register(app, "job3", lambda payload, ctx: BatchResult([None]), is_async)
    register(app, "scalar", lambda payload, ctx: BatchResult([None]), is_async)
    job = app.defer("job3", [{"a": 1}, {"a": 2}])
    scalar = app.defer("scalar", {"a": 1})
    app.run_once()
    found = row(db, schema, job.id)
    assert found["last_error"] == "the task returned 1 results for 2 payload items"
    assert (found["attempts"], found["payload"]) == (1, [{"a": 1}, {"a": 2}])
    not_a_list = row(db, schema, scalar.id)
    assert (
        not_a_list["last_error"] == "the task returned a BatchResult, but its payload is not a list"
    )
    assert not_a_list["payload"] == {"a": 1}


@pytest.mark.gw("BJ-08")
def test_a_partial_batch_and_a_last_attempt_fire_each_hook_once(
    make_app: Callable[..., App], db: Conn, schema: str, is_async: bool
) -> None:
    """graphile-worker behaviours BJ-08."""
    app, recorder = make_opened(make_app, prefetch=4)
    register(app, "job3", per_item, is_async)
    partial = app.defer("job3", [{"a": 1}, {"a": 2}])
    last = app.defer("job3", [{"a": 5}], max_attempts=1)
    app.run_once()
    assert row(db, schema, partial.id)["payload"] == [{"a": 1}]
    assert row(db, schema, last.id)["attempts"] == 1
    assert sorted(recorder.events) == [
        ("failed", "job3", "False"),
        ("failed", "job3", "True"),
        ("permanently_failed", "job3"),
    ]
