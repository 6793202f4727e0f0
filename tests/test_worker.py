"""Running jobs: order, retries with graphile-worker's backoff, permanent failure, lifecycle."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from pgworker import App, JobContext, PgWorkerError, RawJob

Conn = psycopg.Connection[tuple[Any, ...]]


class SayHello(msgspec.Struct):
    message: str


def job_rows(db: Conn, schema: str) -> list[tuple[Any, ...]]:
    return db.execute(
        f"select id, task_identifier, attempts, max_attempts, last_error, locked_by "
        f'from "{schema}".jobs order by id'
    ).fetchall()


@pytest.mark.gw("F-04", "F-05")
def test_run_once_runs_what_is_due_and_leaves_the_future(
    opened: App, db: Conn, schema: str
) -> None:
    ran: list[tuple[str, int, int]] = []

    @opened.task("say_hello")
    def say_hello(payload: SayHello, ctx: JobContext) -> None:
        ran.append((payload.message, ctx.job.id, ctx.job.attempts))

    now = say_hello.defer({"message": "now"})
    later = say_hello.defer({"message": "later"}, run_at=datetime.now(UTC) + timedelta(hours=1))
    opened.defer("not_ours", {})
    opened.run_once()
    assert ran == [("now", now.id, 1)]
    remaining = job_rows(db, schema)
    assert [(r[0], r[1], r[2], r[5]) for r in remaining] == [
        (later.id, "say_hello", 0, None),
        (later.id + 1, "not_ours", 0, None),
    ]


@pytest.mark.gw("F-12")
def test_jobs_run_by_priority_then_run_at(opened: App) -> None:
    order: list[str] = []
    opened.concurrency = 1

    @opened.task("record")
    def record(payload: dict[str, str]) -> None:
        order.append(payload["name"])

    past = datetime.now(UTC) - timedelta(minutes=5)
    record.defer({"name": "b-late"}, run_at=past + timedelta(seconds=2))
    record.defer({"name": "c-low"}, priority=5, run_at=past)
    record.defer({"name": "a-early"}, run_at=past)
    record.defer({"name": "first"}, priority=-10)
    record.defer({"name": "b-later"}, run_at=past + timedelta(seconds=3))
    opened.run_once()
    assert order == ["first", "a-early", "b-late", "b-later", "c-low"]


@pytest.mark.gw("FL-01", "FL-02", "FL-06")
def test_a_failure_follows_graphile_workers_backoff(opened: App, db: Conn, schema: str) -> None:
    @opened.task("flaky")
    def flaky(payload: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    job = flaky.defer({})
    opened.run_once()
    attempts, last_error, locked_by, delay = db.execute(
        f"select attempts, last_error, locked_by, extract(epoch from run_at - now()) "
        f'from "{schema}"._private_jobs where id = %s',
        (job.id,),
    ).fetchone() or (None, None, None, None)
    assert (attempts, last_error, locked_by) == (1, "RuntimeError: boom", None)
    # run_at = greatest(now(), run_at) + exp(least(attempts, 10)) s, in database time.
    assert math.exp(1) - 1.0 < float(delay) <= math.exp(1)

    for attempt in (2, 3, 11):
        db.execute(
            f"update \"{schema}\"._private_jobs set run_at = now() - interval '1 hour', "
            f"attempts = %s where id = %s",
            (attempt - 1, job.id),
        )
        opened.run_once()
        row = db.execute(
            f'select extract(epoch from run_at - now()) from "{schema}"._private_jobs '
            f"where id = %s",
            (job.id,),
        ).fetchone()
        assert row is not None
        expected = math.exp(min(attempt, 10))
        assert expected - 1.0 < float(row[0]) <= expected, attempt


@pytest.mark.gw("FL-04", "FL-05")
def test_after_max_attempts_the_job_stays_and_is_not_fetched(
    opened: App, db: Conn, schema: str
) -> None:
    calls = []

    @opened.task("doomed")
    def doomed(payload: dict[str, Any]) -> None:
        calls.append(1)
        raise ValueError("nope")

    job = doomed.defer({}, max_attempts=2)
    for _ in range(3):
        db.execute(f'update "{schema}"._private_jobs set run_at = now() where id = %s', (job.id,))
        opened.run_once()
    assert len(calls) == 2
    assert job_rows(db, schema) == [(job.id, "doomed", 2, 2, "ValueError: nope", None)]


def test_a_payload_that_no_longer_decodes_fails_permanently(
    opened: App, db: Conn, schema: str
) -> None:
    ran = []

    @opened.task("say_hello")
    def say_hello(payload: SayHello) -> None:
        ran.append(payload)

    db.execute(f"""select "{schema}".add_job('say_hello', '{{"msg": "renamed"}}')""")
    say_hello.defer({"message": "fine"})
    opened.run_once()
    assert ran == [SayHello("fine")]
    [(_, _, attempts, max_attempts, last_error, _)] = job_rows(db, schema)
    assert attempts == max_attempts == 25
    assert "PayloadError" in last_error
    assert "field `message`" in last_error


def test_a_payload_that_does_not_decode_is_logged_in_one_line(
    opened: App, db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    @opened.task("say_hello")
    def say_hello(payload: SayHello) -> None: ...

    row = db.execute(f"""select id from "{schema}".add_job('say_hello', '{{"msg": "x"}}')""")
    job_id = row.fetchone()[0]  # type: ignore[index]
    opened.run_once()
    [record] = [r for r in caplog.records if r.getMessage().startswith("Failed say_hello")]
    assert record.getMessage() == (
        f"Failed say_hello #{job_id} in {record.duration_ms:.1f} ms (attempt 1 of 25, "  # type: ignore[attr-defined]
        "permanently): PayloadError: payload does not match SayHello: "
        "Object missing required field `message`"
    )
    assert record.levelname == "ERROR"
    assert record.exc_info is None


@pytest.mark.gw("Q-01", "Q-05")
def test_named_queues_run_one_job_at_a_time_in_order(opened: App) -> None:
    opened.concurrency = 4
    active: dict[str, int] = {}
    overlaps: list[str] = []
    order: list[int] = []
    lock = threading.Lock()

    @opened.task("serial")
    def serial(payload: dict[str, int], ctx: JobContext) -> None:
        queue = ctx.job.queue_name or "-"
        with lock:
            active[queue] = active.get(queue, 0) + 1
            if active[queue] > 1:
                overlaps.append(queue)
            if queue == "serial":
                order.append(payload["n"])
        time.sleep(0.02)
        with lock:
            active[queue] -= 1

    for n in range(8):
        serial.defer({"n": n}, queue="serial")
        serial.defer({"n": n}, queue="other")
    opened.run_once()
    assert overlaps == []
    assert order == list(range(8))


@pytest.mark.gw("F-09", "SH-02", "SH-09", "LQ-19")
def test_start_and_stop_inside_one_process(opened: App, db: Conn, schema: str) -> None:
    done = threading.Event()
    seen: list[str] = []

    @opened.task("say_hello")
    def say_hello(payload: SayHello, ctx: JobContext) -> None:
        seen.append(payload.message)
        if len(seen) == 3:
            done.set()

    handle = opened.start()
    try:
        for message in ("a", "b", "c"):
            say_hello.defer({"message": message})
        assert done.wait(5)
    finally:
        handle.stop(timeout=5)
    assert sorted(seen) == ["a", "b", "c"]
    assert job_rows(db, schema) == []
    assert handle.worker.wait_stopped(0)


@pytest.mark.gw("F-09")
def test_a_running_worker_wakes_on_notification(make_app: Callable[..., App]) -> None:
    app = make_app(poll_interval=60)  # only a notification can explain a quick pickup
    started = threading.Event()

    @app.task("ping")
    def ping(payload: dict[str, Any]) -> None:
        started.set()

    with app:
        handle = app.start()
        try:
            assert handle.worker.wait_listening(5)
            assert handle.worker.is_listening
            t0 = time.monotonic()
            ping.defer({})
            assert started.wait(2)
            assert time.monotonic() - t0 < 0.5
        finally:
            handle.stop(timeout=5)


@pytest.mark.gw("WU-02", "E-10")
def test_an_app_without_tasks_refuses_to_run(opened: App) -> None:
    with pytest.raises(Exception, match="no tasks"):
        opened.run_once()


def test_run_once_waits_for_a_queue_unlocked_during_an_empty_claim(
    opened: App, db: Conn, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: run_once returned early when the completion that unlocks a named queue
    landed while a claim was in flight and came back empty."""
    opened.concurrency = 4
    ran: list[tuple[str | None, int]] = []

    @opened.task("step")
    def step(payload: dict[str, int], ctx: JobContext) -> None:
        if ctx.job.queue_name == "serial" and payload["n"] == 0:
            time.sleep(0.3)  # the queue stays locked meanwhile
        ran.append((ctx.job.queue_name, payload["n"]))

    step.defer_many([{"n": 0}, {"n": 1}], queue="serial")
    step.defer_many([{"n": n} for n in range(4)])
    real_claim = opened.store.claim_jobs
    slowed: list[bool] = []

    def slow_empty_claim(**kwargs: Any) -> Any:
        claimed = real_claim(**kwargs)
        if not claimed and not slowed:
            slowed.append(True)
            time.sleep(0.6)  # the queue's first job finishes and unlocks it meanwhile
        return claimed

    monkeypatch.setattr(opened.store, "claim_jobs", slow_empty_claim)
    opened.run_once()
    assert slowed, "the claim never came back empty while the queue was locked"
    assert sorted(ran, key=str) == sorted(
        [("serial", 0), ("serial", 1), (None, 0), (None, 1), (None, 2), (None, 3)], key=str
    )
    assert job_rows(db, schema) == []


@pytest.mark.gw("LQ-13", "LQ-15", "Q-09")
def test_prefetched_jobs_that_never_started_go_back_untouched(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(concurrency=1, prefetch=3)
    started = threading.Event()

    @app.task("slow")
    def slow(payload: dict[str, int]) -> None:
        started.set()
        time.sleep(0.5)

    with app:
        app.migrate()
        jobs = slow.defer_many([{"n": n} for n in range(4)])
        handle = app.start()
        assert started.wait(5)
        locked = db.execute(
            f'select count(*) from "{schema}".jobs where locked_by = %s', (handle.worker_id,)
        ).fetchone()
        assert locked == (4,)  # one running, three prefetched
        handle.stop(timeout=5)
    rows = db.execute(
        f'select id, attempts, locked_by, last_error, run_at from "{schema}".jobs order by id'
    ).fetchall()
    assert len(rows) == 3  # the running one finished
    by_id = {job.id: job for job in jobs}
    for id_, attempts, locked_by, last_error, run_at in rows:
        assert (attempts, locked_by, last_error) == (0, None, None)
        assert run_at == by_id[id_].run_at


def test_prefetch_keeps_named_queues_serial_and_ordered(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=4, prefetch=8)
    active = 0
    overlaps = 0
    order: list[int] = []
    lock = threading.Lock()

    @app.task("serial")
    def serial(payload: dict[str, int]) -> None:
        nonlocal active, overlaps
        with lock:
            active += 1
            overlaps += active > 1
            order.append(payload["n"])
        time.sleep(0.01)
        with lock:
            active -= 1

    with app:
        app.migrate()
        for n in range(12):  # one statement each: distinct run_at, so a strict order
            serial.defer({"n": n}, queue="one-at-a-time")
        app.run_once()
    assert overlaps == 0
    assert order == list(range(12))


def test_a_queue_backlog_does_not_idle_the_other_slots(make_app: Callable[..., App]) -> None:
    """Regression: a claim whose window was filled by one queue's backlog returned one job,
    and the worker slept instead of claiming the unqueued jobs behind it."""
    app = make_app(concurrency=4, poll_interval=30)
    starts: dict[str, float] = {}

    @app.task("slow")
    def slow(payload: dict[str, str]) -> None:
        starts[payload["name"]] = time.monotonic()
        time.sleep(0.5)

    with app:
        app.migrate()
        app.defer_raw(
            [RawJob("slow", {"name": f"serial-{i}"}, queue="serial") for i in range(4)]
            + [RawJob("slow", {"name": f"free-{i}"}) for i in range(3)]
        )
        began = time.monotonic()
        app.run_once()
    # The queue's first job and the three free ones start together.
    assert all(starts[f"free-{i}"] - began < 0.4 for i in range(3)), starts
    assert starts["serial-1"] - began >= 0.5


def test_an_error_text_with_nul_is_stored_and_nothing_stalls(
    opened: App, db: Conn, schema: str
) -> None:
    """Regression: PostgreSQL refused the text, and the completer retried it forever."""

    @opened.task("nul")
    def nul(payload: dict[str, Any]) -> None:
        raise ValueError("bad\x00byte")

    @opened.task("fine")
    def fine(payload: dict[str, Any]) -> None: ...

    job = nul.defer({})
    fine.defer_many([{}] * 3)
    opened.run_once()
    assert job_rows(db, schema) == [(job.id, "nul", 1, 25, "ValueError: bad\\x00byte", None)]


def test_a_payload_error_raised_by_task_code_is_an_ordinary_failure(
    opened: App, db: Conn, schema: str
) -> None:
    """Only a payload that cannot be decoded fails for good, not one the task builds."""

    @opened.task("typed")
    def typed(payload: SayHello) -> None: ...

    @opened.task("parent")
    def parent(payload: dict[str, Any]) -> None:
        typed.defer({"message": 1})  # raises PayloadError inside the task

    job = parent.defer({})
    opened.run_once()
    [(_, _, attempts, max_attempts, last_error, _)] = job_rows(db, schema)
    assert (attempts, max_attempts) == (1, 25)
    assert last_error.startswith("PayloadError")
    assert job.id


@pytest.mark.gw("F-12")
def test_prefetched_jobs_run_in_priority_order(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=1, prefetch=30)
    order: list[int] = []

    @app.task("p")
    def p(payload: dict[str, int]) -> None:
        order.append(payload["priority"])

    priorities = [26, 16, 11, 10, 23, 3, 29, 0, 7, 14]
    with app:
        app.migrate()
        app.defer_raw([RawJob("p", {"priority": n}, priority=n) for n in priorities])
        app.run_once()
    assert order == sorted(priorities)


def test_failures_log_their_traceback(opened: App, caplog: pytest.LogCaptureFixture) -> None:
    @opened.task("boom")
    def boom(payload: dict[str, Any]) -> None:
        raise KeyError("missing")

    boom.defer({})
    opened.run_once()
    [record] = [r for r in caplog.records if r.getMessage().startswith("Failed boom")]
    assert record.levelname == "WARNING"
    assert "retry in 2.7 s" in record.getMessage()
    assert "Traceback (most recent call last)" in record.getMessage()
    assert getattr(record, "job_id", None) is not None


def test_a_breaking_migration_stops_the_worker_with_an_error(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    assert_a_breaking_notice_stops_the_worker(
        make_app(),
        db,
        f'insert into "{schema}".migrations (id, breaking) values (999999, true)',
        "newer than this pgworker understands",
    )


def test_a_breaking_migration_whose_revision_cannot_be_read_stops_the_worker(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """Regression: the check ran on the listener's thread, and its failure counted as a
    lost LISTEN connection: the notice was dropped and the worker went on, maybe on a
    schema it no longer understands. Unable to check, it stops (a supervisor's restart
    checks the schema again)."""
    assert_a_breaking_notice_stops_the_worker(
        make_app(),
        db,
        f'alter table "{schema}".migrations rename to migrations_away',
        "reading the revision failed",
    )


def assert_a_breaking_notice_stops_the_worker(
    app: App, db: Conn, before_notice: str, error: str
) -> None:
    """Start a worker of ``app``, run ``before_notice`` once it listens, announce a
    breaking migration; the worker must stop by itself with a PgWorkerError matching
    ``error``."""
    app.task("t")(lambda payload: None)
    with app:
        handle = app.start()
        assert handle.worker.wait_listening(5)
        db.execute(before_notice)
        db.execute(
            "select pg_notify('worker:migrate', "
            '\'{"migrationNumber": 999999, "breaking": true}\')'
        )
        assert handle.worker.wait_stopped(10)
        with pytest.raises(PgWorkerError, match=error):
            handle.stop()


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    n: int


@pytest.mark.gw("ADD-23")
def test_strict_payload_types_accept_trace_context(opened: App, db: Conn, schema: str) -> None:
    """Tracing (ours, or the Rust crate's) adds `_trace` to object payloads."""
    seen: list[Any] = []

    @opened.task("strict")
    def strict(payload: Strict) -> None:
        seen.append(payload)

    @opened.task("counts")
    def counts(payload: dict[str, int]) -> None:
        seen.append(payload)

    trace = {"flags": 1, "trace_id": "0" * 31 + "1", "span_id": "0" * 15 + "1"}
    strict.defer({"n": 1, "_trace": trace})
    opened.defer("counts", {"a": 2, "_trace": trace})
    opened.run_once()
    assert sorted(map(repr, seen)) == sorted(map(repr, [Strict(n=1), {"a": 2}]))
    assert job_rows(db, schema) == []


@pytest.mark.gw("WU-13")
def test_the_start_line_names_database_schema_tasks_and_version(
    make_app: Callable[..., App], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a worker runs against, in one line, without the password."""
    from psycopg.conninfo import make_conninfo

    app = make_app(database_url=make_conninfo(database_url, password="s3cret"), concurrency=2)

    @app.task("beta")
    def beta(payload: dict[str, Any]) -> None:
        pass

    @app.task("alpha")
    async def alpha(payload: dict[str, Any]) -> None:
        pass

    caplog.set_level(logging.INFO, logger="pgworker.worker")
    with app:
        app.start().stop()
    [line] = [r.getMessage() for r in caplog.records if " started: pgworker " in r.getMessage()]
    assert "dbname=" in line
    assert f"schema {app.schema!r}" in line
    assert "concurrency 2 + 100 async" in line
    assert line.endswith("2 task(s): alpha, beta")
    assert "s3cret" not in caplog.text
