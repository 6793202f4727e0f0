"""The worker's per-job machinery, in isolation: InFlight's wake-ups of the fetcher, the
cursor the store keeps for per-batch statements, and hook dispatch skipped without a
listener."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from pgworker import App, Plugin
from pgworker.async_jobs import AsyncJobs
from pgworker.hooks import Hooks
from pgworker.inflight import ROOM_RECHECK, InFlight, Room
from pgworker.job import Job
from pgworker.logs import (
    ATOMIC_WRITE,
    TEXT_FORMAT,
    LineHandler,
    TextFormatter,
    gathered_lines,
)
from pgworker.outcome import Outcome
from pgworker.store import LITERAL_LIMIT_MAX, ClaimedJob
from pgworker.store_base import bigint_array

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def claimed(job_id: int) -> ClaimedJob:
    job = Job(
        id=job_id,
        task_identifier="t",
        queue_name=None,
        priority=0,
        run_at=NOW,
        attempts=1,
        max_attempts=25,
        last_error=None,
        created_at=NOW,
        updated_at=NOW,
        key=None,
        locked_at=NOW,
        locked_by="w",
        revision=0,
        flags=None,
    )
    return ClaimedJob(job, "{}")


def running(inflight: InFlight, ids: list[int]) -> None:
    jobs = [claimed(i) for i in ids]
    inflight.claimed(jobs)
    for job in jobs:
        assert inflight.start(job, None) is not None


def room_in_thread(
    inflight: InFlight, need: int, **kwargs: Any
) -> tuple[list[Room], threading.Thread]:
    got: list[Room] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: got.append(inflight.room(need, stop, **kwargs)), daemon=True
    )
    thread.start()
    return got, thread


def test_room_waits_for_a_whole_batch_of_free_slots() -> None:
    """A finished job that leaves fewer free slots than the batch needs does not end the
    wait; the one that makes room for the batch does, and the room is all that is free."""
    inflight = InFlight(4)
    running(inflight, [1, 2, 3, 4])
    got, thread = room_in_thread(inflight, 3)
    inflight.finished(1)
    inflight.finished(2)
    thread.join(0.2)
    assert thread.is_alive()
    assert not got
    inflight.finished(3)
    thread.join(5)
    assert got == [Room(3, 0)]


def test_room_after_a_give_back_waits_for_a_finish() -> None:
    """With ``after_finishes``, free slots count only once one more job has finished."""
    inflight = InFlight(2)
    running(inflight, [1])
    got, thread = room_in_thread(inflight, 1, after_finishes=inflight.finishes)
    thread.join(0.2)
    assert thread.is_alive()
    assert not got
    inflight.finished(1)
    thread.join(5)
    assert got == [Room(2, 0)]


def test_an_async_job_that_finishes_wakes_room_for_its_slot() -> None:
    """Async jobs take no sync slot: their finish is what frees an event-loop slot,
    which room() asks ``async_room`` about."""
    slots = [0]
    inflight = InFlight(0, async_room=lambda: slots[0])
    job = claimed(1)
    inflight.claimed([job], is_async=True)
    assert inflight.start(job, None) is not None
    got, thread = room_in_thread(inflight, 1)
    thread.join(0.2)
    assert thread.is_alive()
    slots[0] = 1
    inflight.finished(1)
    thread.join(5)
    assert got == [Room(0, 1)]


def test_an_async_slot_given_back_unused_wakes_room() -> None:
    """A reserved event-loop slot that no job took (its job was given back before it
    started) frees room without any job finishing: the fetcher waiting in room() must
    hear of it at once, not at its backstop re-check."""
    slots = [0]
    inflight = InFlight(0, async_room=lambda: slots[0])
    got, thread = room_in_thread(inflight, 1)
    thread.join(0.2)
    assert thread.is_alive()
    slots[0] = 1
    inflight.slot_freed()
    thread.join(ROOM_RECHECK / 2)
    assert got == [Room(0, 1)]


def test_async_jobs_releasing_a_reserved_slot_wakes_room() -> None:
    """AsyncJobs.release (a job given back before it started, or a claim shorter than
    the reservation) tells InFlight, so an async-only worker claims again at once."""
    jobs: AsyncJobs | None = None
    inflight = InFlight(0, async_room=lambda: jobs.free_slots() if jobs else 0)
    jobs = AsyncJobs(None, inflight, lambda outcome: None, limit=1, name="test")  # type: ignore[arg-type]
    jobs.start()
    try:
        assert jobs.reserve(1) == 1
        got, thread = room_in_thread(inflight, 1)
        thread.join(0.2)
        assert thread.is_alive()
        jobs.release(1)
        thread.join(ROOM_RECHECK / 2)
        assert got == [Room(0, 1)]
    finally:
        jobs.stop()


def test_room_looks_again_by_itself_if_a_wake_up_is_missed() -> None:
    """The backstop: room that appears with no wake-up at all is seen within
    ROOM_RECHECK seconds."""
    slots = [0]
    inflight = InFlight(0, async_room=lambda: slots[0])
    got, thread = room_in_thread(inflight, 1)
    thread.join(0.2)
    slots[0] = 1
    thread.join(ROOM_RECHECK * 3)
    assert got == [Room(0, 1)]


def test_waits_for_running_and_settled_jobs_still_wake() -> None:
    inflight = InFlight(2)
    running(inflight, [1, 2])
    done: list[str] = []
    waiters = [
        threading.Thread(target=lambda: inflight.wait_running_done(None) and done.append("ran")),
        threading.Thread(target=lambda: inflight.wait_settled(None) and done.append("settled")),
    ]
    for waiter in waiters:
        waiter.start()
    inflight.finished(1)
    inflight.settled([1])
    inflight.finished(2)
    waiters[0].join(5)
    assert done == ["ran"]
    inflight.settled([2])
    waiters[1].join(5)
    assert done == ["ran", "settled"]


def test_hooks_say_whether_a_plugin_listens() -> None:
    class Fetched(Plugin):
        def on_job_fetched(self, job: Job) -> None: ...

    hooks = Hooks()
    assert not hooks.listens("on_job_fetched", "on_job_completed")
    hooks.add(Fetched())
    assert hooks.listens("on_job_completed", "on_job_fetched")
    assert not hooks.listens("on_job_completed")


def test_bigint_array_is_postgresql_text_form(db: psycopg.Connection[tuple[Any, ...]]) -> None:
    assert bigint_array([]) == "{}"
    assert bigint_array([3, 1, 9_007_199_254_740_993]) == "{3,1,9007199254740993}"
    row = db.execute("select %s::bigint[]", [bigint_array([3, 1, 2**62])]).fetchone()
    assert row == ([3, 1, 2**62],)


def test_the_hot_cursor_is_per_thread_and_per_connection(opened: App, database_url: str) -> None:
    """Two threads on one connection never share the kept cursor (neither could read the
    other's rows), and a new connection gets a new cursor."""
    store = opened.store
    with (
        psycopg.connect(database_url, autocommit=True) as one,
        psycopg.connect(database_url, autocommit=True) as two,
    ):
        first = store._hot_cursor(one)
        assert store._hot_cursor(one) is first
        other: list[psycopg.Cursor[Any]] = []
        thread = threading.Thread(target=lambda: other.append(store._hot_cursor(one)))
        thread.start()
        thread.join(5)
        assert other
        assert other[0] is not first
        assert other[0].connection is one
        moved = store._hot_cursor(two)
        assert moved is not first
        assert moved.connection is two
        first.close()
        assert store._hot_cursor(one) is not first


def test_small_claims_are_planned_once_and_large_ones_take_their_limit_as_a_parameter(
    opened: App, database_url: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    """A claim of up to LITERAL_LIMIT_MAX jobs is a statement of its own with the limit
    spelled out, which PostgreSQL plans once and reuses (a limit sent as a parameter had
    every claim planned anew); larger claims send it as a parameter. Both take exactly as
    many jobs as asked for."""
    noop = opened.task("noop")(lambda payload: None)
    noop.defer_many([{"n": n} for n in range(2_000)])
    db.execute(f'analyze "{opened.schema}"._private_jobs')
    store = opened.store
    task_names = {store.register_tasks(["noop"]).popitem()[0]: "noop"}
    assert b"limit 8\n" in opened.store.queries.with_limit("claim_jobs", 8)
    assert b"%(limit)s" in opened.store.queries["claim_jobs"]
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=0) as conn:
        for limit in [8] * 20 + [LITERAL_LIMIT_MAX, LITERAL_LIMIT_MAX + 1, 500]:
            jobs = store.claim_jobs(worker_id="w", task_names=task_names, limit=limit, conn=conn)
            assert len(jobs) == limit
        plans = conn.execute(
            "select statement, generic_plans, custom_plans from pg_prepared_statements"
            " where statement like '%%for update skip locked%%'"
        ).fetchall()
    by_limit = {
        ("limit 8" in text, "limit $" in text): (generic, custom)
        for text, generic, custom in plans
        if "limit 8" in text or "limit $" in text
    }
    # PostgreSQL tries five custom plans before it settles on the generic one.
    assert by_limit[(True, False)][0] >= 10
    assert by_limit[(False, True)] == (0, 2)


@pytest.mark.parametrize("fetched_listener", [False, True])
def test_jobs_run_and_are_reported_with_or_without_listeners(
    make_app: Any, fetched_listener: bool
) -> None:
    """Without a plugin on the per-job hooks the worker skips them; with one, each job is
    reported as before."""
    app = make_app()
    seen: list[tuple[str, int]] = []

    class Listener(Plugin):
        def on_job_fetched(self, job: Job) -> None:
            seen.append(("fetched", job.id))

        def on_job_completed(self, job: Job, duration_ms: float) -> None:
            seen.append(("completed", job.id))

    if fetched_listener:
        app.hooks.add(Listener())
    ran: list[int] = []

    @app.task("t")
    def t(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    with app:
        app.migrate()
        ids = [t.defer({"n": n}).id for n in range(5)]
        app.run_once(install_signal_handlers=False)
    assert sorted(ran) == list(range(5))
    if fetched_listener:
        assert sorted(i for kind, i in seen if kind == "fetched") == sorted(ids)
        assert sorted(i for kind, i in seen if kind == "completed") == sorted(ids)
    else:
        assert seen == []


class CountingStream(io.StringIO):
    writes = 0

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        self.writes += 1
        self.pieces.append(text)
        return super().write(text)


@pytest.fixture
def line_logger() -> Iterator[tuple[logging.Logger, CountingStream]]:
    stream = CountingStream()
    handler = LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pgworker.tests.gathered")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_gathered_lines_are_written_at_once_in_order(
    line_logger: tuple[logging.Logger, CountingStream],
) -> None:
    """The completer's lines for a batch go out in one write, in the order logged;
    outside the block, and from other threads meanwhile, each line goes out at once."""
    logger, stream = line_logger
    logger.info("before")
    assert (stream.getvalue(), stream.writes) == ("before\n", 1)
    with gathered_lines():
        logger.info("one")
        with gathered_lines():
            logger.info("two")
        other = threading.Thread(target=lambda: logger.info("elsewhere"))
        other.start()
        other.join(5)
        logger.warning("three")
        assert stream.getvalue() == "before\nelsewhere\n"
    assert stream.getvalue() == "before\nelsewhere\none\ntwo\nthree\n"
    assert stream.writes == 3
    logger.info("after")
    assert stream.writes == 4


def test_gathered_lines_go_out_in_pieces_a_pipe_writes_whole(
    line_logger: tuple[logging.Logger, CountingStream],
) -> None:
    """Processes sharing one stderr pipe (``run --processes``): a write of at most
    PIPE_BUF bytes is atomic, so each write holds whole lines and at most that much (a
    longer line alone), and the lines keep their order."""
    logger, stream = line_logger
    lines = [f"job {i} é " + "x" * (i % 97) for i in range(400)]
    long_line = "y" * (ATOMIC_WRITE + 10)
    with gathered_lines():
        for line in lines[:200]:
            logger.info(line)
        logger.info(long_line)
        for line in lines[200:]:
            logger.info(line)
    assert stream.getvalue() == "".join(f"{x}\n" for x in [*lines[:200], long_line, *lines[200:]])
    assert 3 < stream.writes < 20
    for piece in stream.pieces:
        assert piece.endswith("\n")
        assert len(piece.encode()) <= ATOMIC_WRITE or piece == long_line + "\n"


def test_the_text_formatter_writes_what_logging_formatter_writes() -> None:
    """The CLI's formatter caches the time's text per second: the lines stay the same."""
    ours, stdlib = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_000.25):
        record = logging.makeLogRecord(
            {"msg": "m %s", "args": (1,), "levelname": "INFO", "name": "n", "created": created}
        )
        record.msecs = (created - int(created)) * 1000
        assert ours.format(record) == stdlib.format(record)


def test_the_text_formatter_adds_a_traceback_as_logging_formatter_does() -> None:
    ours, stdlib = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    for fields in ({"exc_info": exc_info}, {"stack_info": "Stack (most recent call last):"}):
        record = logging.makeLogRecord({"msg": "failed", "name": "n", **fields})
        assert ours.format(record) == stdlib.format(logging.makeLogRecord(vars(record)))
        assert "boom" in ours.format(record) or "Stack" in ours.format(record)


def test_a_job_line_names_outcome_log_as_its_origin(caplog: pytest.LogCaptureFixture) -> None:
    """The job's line is made without logging's stack walk (SiteRecords), yet says where
    it comes from and carries the job's fields."""
    with caplog.at_level(logging.INFO, logger="pgworker.worker"):
        Outcome(claimed(3).job, 2.25).log()
    (record,) = caplog.records
    assert (record.module, record.funcName, record.name) == ("outcome", "log", "pgworker.worker")
    assert record.getMessage() == "Completed t #3 in 2.2 ms (attempt 1 of 25)"
    assert (record.job_id, record.duration_ms, record.attempt) == (3, 2.25, 1)
