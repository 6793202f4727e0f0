"""What a running task can reach: its job, app state, follow-ups; and forbidden flags."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgworker import App, JobContext, UnknownExtensionError

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class RunCounter:
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def increment(self) -> int:
        with self.lock:
            self.count += 1
            return self.count


def remaining(db: Conn, schema: str) -> list[tuple[Any, ...]]:
    return db.execute(f'select task_identifier, flags from "{schema}".jobs order by id').fetchall()


@pytest.mark.gw("WU-10", "FF-07", "F-05")
def test_the_context_carries_the_job(make_app: Callable[..., App]) -> None:
    app = make_app()
    seen: list[tuple[Any, ...]] = []

    @app.task("inspect")
    def inspect(payload: dict[str, Any], ctx: JobContext) -> None:
        job = ctx.job
        seen.append((job.task_identifier, job.queue_name, job.key, job.flags, job.priority))
        seen.append((job.attempts, job.max_attempts, job.locked_by == ctx.worker_id))
        ctx.logger.info("inside job %d", job.id)

    with app:
        app.migrate()
        inspect.defer({}, queue="q", job_key="k", flags=["x"], priority=3, max_attempts=4)
        app.run_once()
    assert seen == [("inspect", "q", "k", ["x"], 3), (1, 4, True)]


def test_extensions_are_shared_state(make_app: Callable[..., App]) -> None:
    counter = RunCounter()
    app = make_app(extensions=[counter])
    results: list[int] = []

    @app.task("count")
    def count(payload: dict[str, Any], ctx: JobContext) -> None:
        results.append(ctx.get_ext(RunCounter).increment())

    @app.task("missing")
    def missing(payload: dict[str, Any], ctx: JobContext) -> None:
        ctx.get_ext(datetime)

    with app:
        app.migrate()
        count.defer_many([{}] * 5)
        missing.defer({})
        app.run_once()
    assert sorted(results) == [1, 2, 3, 4, 5]
    assert counter.count == 5
    app.add_extension("a string")
    assert app.extensions.get(str) == "a string"
    with pytest.raises(UnknownExtensionError, match="no extension of type datetime"):
        app.extensions.get(datetime)


@pytest.mark.gw("WU-18")
def test_a_task_defers_a_follow_up_and_queries_through_the_pool(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app()
    counted: list[int] = []

    @app.task("check_ws")
    def check_ws(payload: dict[str, str]) -> None: ...

    @app.task("send_ws")
    def send_ws(payload: dict[str, str], ctx: JobContext) -> None:
        check_ws.defer(
            {"request_id": payload["request_id"]},
            run_at=datetime.now(UTC) + timedelta(seconds=10),
        )
        with ctx.connection() as conn:
            row = conn.execute(f'select count(*) from "{schema}".jobs').fetchone()
            assert row is not None
            counted.append(row[0])

    with app:
        app.migrate()
        send_ws.defer({"request_id": "r1"})
        app.run_once()
    assert counted == [2]  # itself (still running) and its follow-up
    assert [r[0] for r in remaining(db, schema)] == ["check_ws"]


@pytest.mark.gw("FF-01")
def test_forbidden_flags_leave_jobs_for_other_workers(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(forbidden_flags=["slow"])
    ran: list[str] = []

    @app.task("work")
    def work(payload: dict[str, str]) -> None:
        ran.append(payload["name"])

    with app:
        app.migrate()
        work.defer({"name": "slow"}, flags=["slow"])
        work.defer({"name": "slow-and-big"}, flags=["big", "slow"])
        work.defer({"name": "big"}, flags=["big"])
        work.defer({"name": "plain"})
        app.run_once()
    assert sorted(ran) == ["big", "plain"]
    assert remaining(db, schema) == [
        ("work", {"slow": True}),
        ("work", {"big": True, "slow": True}),
    ]


@pytest.mark.gw("FF-02")
def test_forbidden_flags_from_a_function_are_asked_before_each_fetch(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    calls: list[int] = []

    def rate_limited() -> list[str]:
        calls.append(1)
        return ["email"] if len(calls) <= 1 else []

    app = make_app(forbidden_flags=rate_limited, concurrency=1)
    ran: list[str] = []

    @app.task("work")
    def work(payload: dict[str, str]) -> None:
        ran.append(payload["name"])

    with app:
        app.migrate()
        work.defer({"name": "email"}, flags=["email"])
        work.defer({"name": "sms"}, flags=["sms"])
        app.run_once()  # first fetch: email forbidden; later fetches: allowed
    assert ran == ["sms", "email"]
    assert len(calls) >= 2
    assert remaining(db, schema) == []


def test_bad_forbidden_flags_are_reported(make_app: Callable[..., App]) -> None:
    app = make_app(forbidden_flags=lambda: "oops")
    with pytest.raises(Exception, match="list of strings"):
        app.current_forbidden_flags()
