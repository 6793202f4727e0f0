"""Running jobs as graphile-worker's suites check it: the standard selection, run_at,
priority, named queues, failures, forbidden flags and batch inserts (ids in
tests/behaviours.toml)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgworker import App, JobContext, RawJob

Conn = psycopg.Connection[tuple[Any, ...]]


def standard_selection(app: App, db: Conn, schema: str) -> dict[str, int]:
    """graphile-worker's makeSelectionOfJobs: five job3 jobs an hour ahead, one of them
    permanently failed and one locked."""
    later = datetime.now(UTC) + timedelta(hours=1)
    names = ["failed", "regular1", "locked", "regular2", "untouched"]
    ids = {name: app.defer("job3", {"name": name}, run_at=later).id for name in names}
    db.execute(
        f'update "{schema}"._private_jobs set attempts = max_attempts, '
        "last_error = 'Failed forever' where id = %s",
        (ids["failed"],),
    )
    db.execute(
        f"update \"{schema}\"._private_jobs set locked_by = 'test', locked_at = now() "
        "where id = %s",
        (ids["locked"],),
    )
    return ids


def job_rows(db: Conn, schema: str) -> dict[int, dict[str, Any]]:
    cursor = db.execute(f'select * from "{schema}".jobs order by id')
    names = [c.name for c in cursor.description or []]
    return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


@pytest.mark.gw("F-02")
def test_run_once_runs_the_ready_jobs_and_leaves_the_standard_selection(
    opened: App, db: Conn, schema: str
) -> None:
    ran: list[str] = []

    def record(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job.task_identifier)

    for name in ("job1", "job2", "job3"):
        opened.task(name)(record)
    for name in ("job1", "job2", "job3"):
        opened.defer(name, {})
    selection = standard_selection(opened, db, schema)
    for name in ("job1", "job2", "job3"):
        opened.defer(name, {})
    opened.run_once()
    assert sorted(ran) == ["job1", "job1", "job2", "job2", "job3", "job3"]
    assert sorted(job_rows(db, schema)) == sorted(selection.values())


@pytest.mark.gw("ADM-03")
def test_reschedule_jobs_on_the_standard_selection(opened: App, db: Conn, schema: str) -> None:
    selection = standard_selection(opened, db, schema)
    before = job_rows(db, schema)
    when = datetime.now(UTC) + timedelta(seconds=60)
    targets = [selection[n] for n in ("failed", "regular1", "locked", "regular2")]
    changed = opened.admin.reschedule_jobs(targets, run_at=when, attempts=1)
    assert sorted(j.id for j in changed) == sorted(
        selection[n] for n in ("failed", "regular1", "regular2")
    )
    after = job_rows(db, schema)
    for name in ("failed", "regular1", "regular2"):
        row = after[selection[name]]
        assert (row["attempts"], row["run_at"]) == (1, when)
        assert row["last_error"] == ("Failed forever" if name == "failed" else None)
    for name in ("locked", "untouched"):
        assert after[selection[name]] == before[selection[name]]


@pytest.mark.gw("F-01")
def test_a_job_waits_for_its_run_at(opened: App, db: Conn, schema: str) -> None:
    ran: list[int] = []

    @opened.task("job3")
    def job3(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    job = job3.defer({}, run_at=datetime.now(UTC) + timedelta(seconds=3))
    opened.run_once()
    opened.run_once()
    assert ran == []
    db.execute(f'update "{schema}"._private_jobs set run_at = now() where id = %s', (job.id,))
    opened.run_once()
    assert ran == [job.id]
    assert job_rows(db, schema) == {}
    assert db.execute(f'select count(*) from "{schema}"._private_job_queues').fetchone() == (0,)


@pytest.mark.gw("F-03")
def test_concurrency_1_runs_unqueued_jobs_one_at_a_time(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=1)
    active, most, done = [0], [0], []
    lock = threading.Lock()

    @app.task("job3")
    def job3(payload: dict[str, int]) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
            done.append(payload["n"])

    with app:
        app.migrate()
        for n in range(5):
            job3.defer({"n": n})
        app.run_once()
        assert app.admin.jobs() == []
    assert (most[0], sorted(done)) == (1, [0, 1, 2, 3, 4])


@pytest.mark.gw("F-10", "F-12")
def test_priority_comes_before_queues_and_ties_go_by_id(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=1)
    order: list[str] = []

    @app.task("job3")
    def job3(payload: dict[str, str]) -> None:
        order.append(payload["name"])

    with app:
        app.migrate()
        job3.defer({"name": "queued-5"}, priority=5, queue="q")
        job3.defer({"name": "free-1"}, priority=1)
        # One statement: one now() for all three, so only the id orders them.
        job3.defer_many([{"name": f"tie-{n}"} for n in range(3)], priority=3)
        app.run_once()
    assert order == ["free-1", "tie-0", "tie-1", "tie-2", "queued-5"]


@pytest.mark.gw("Q-02", "Q-03")
def test_jobs_of_five_queues_run_together_and_lock_their_queues(
    make_app: Callable[..., App], db: Conn, schema: str, database_url: str
) -> None:
    app = make_app(concurrency=5)
    seen: dict[str, Any] = {}

    def all_in_progress() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            seen["queues"] = conn.execute(
                f'select queue_name, locked_by, locked_at from "{schema}"._private_job_queues'
            ).fetchall()
            seen["jobs"] = conn.execute(
                f'select attempts, locked_by from "{schema}".jobs'
            ).fetchall()
            seen["now"] = conn.execute("select now()").fetchone()

    together = threading.Barrier(5, action=all_in_progress)

    @app.task("job3")
    def job3(payload: dict[str, Any], ctx: JobContext) -> None:
        seen.setdefault("worker", ctx.worker_id)
        together.wait(10)  # breaks (and fails the jobs) unless all five run at once

    with app:
        app.migrate()
        started = db.execute("select now()").fetchone()
        for n in range(5):
            job3.defer({}, queue=f"queue-{n}")
        app.run_once()
        assert app.admin.jobs() == []
    worker = seen["worker"]
    assert sorted(q for q, _, _ in seen["queues"]) == [f"queue-{n}" for n in range(5)]
    assert {by for _, by, _ in seen["queues"]} == {worker}
    assert all(started[0] <= at <= seen["now"][0] for _, _, at in seen["queues"])  # type: ignore[index]
    assert seen["jobs"] == [(1, worker)] * 5


@pytest.mark.gw("Q-04", "Q-08", "FL-07", "FL-08")
def test_failed_jobs_with_and_without_queues_are_unlocked(
    opened: App, db: Conn, schema: str
) -> None:
    @opened.task("job3")
    def job3(payload: dict[str, Any]) -> None:
        raise RuntimeError("TEST_ERROR")

    retrying = job3.defer({}, queue="myqueue", max_attempts=3)
    dead = job3.defer({}, queue="last", max_attempts=1)
    free = job3.defer({})
    opened.run_once()
    rows = job_rows(db, schema)
    assert (rows[retrying.id]["attempts"], rows[retrying.id]["max_attempts"]) == (1, 3)
    assert (rows[dead.id]["attempts"], rows[dead.id]["max_attempts"]) == (1, 1)
    assert rows[free.id]["attempts"] == 1
    for row in rows.values():
        assert (row["locked_by"], row["locked_at"]) == (None, None)
        assert row["last_error"] == "RuntimeError: TEST_ERROR"
    queues = db.execute(
        f'select queue_name, locked_by, locked_at from "{schema}"._private_job_queues '
        "order by queue_name"
    ).fetchall()
    assert queues == [("last", None, None), ("myqueue", None, None)]


@pytest.mark.gw("Q-06", "EDGE-09")
def test_every_job_sees_its_own_queue_name(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=20, max_pool_size=21)
    seen: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    @app.task("job3")
    def job3(payload: dict[str, str], ctx: JobContext) -> None:
        with lock:
            seen.append((payload["queue"], ctx.job.queue_name))

    with app:
        app.migrate()
        for round_, queues in enumerate((7, 12, 12)):
            names = [f"q{(round_ + n) % queues}" for n in range(10)]
            app.defer_raw([RawJob("job3", {"queue": name}, queue=name) for name in names])
            app.run_once()
            assert app.admin.jobs() == []
    assert len(seen) == 30
    assert all(expected == actual for expected, actual in seen)


@pytest.mark.gw("BJ-03")
def test_a_batch_job_that_raises_is_retried_with_every_item(
    opened: App, db: Conn, schema: str
) -> None:
    calls: list[Any] = []

    @opened.task("job3")
    def job3(payload: list[dict[str, int]]) -> None:
        calls.append(payload)
        raise RuntimeError("the whole batch failed")

    for n in (1, 2, 3):
        opened.defer("job3", [{"a": n}], job_key="mykey")
    opened.run_once()
    assert calls == [[{"a": 1}, {"a": 2}, {"a": 3}]]
    [(payload, attempts)] = db.execute(
        f'select payload, attempts from "{schema}"._private_jobs'
    ).fetchall()
    assert (payload, attempts) == ([{"a": 1}, {"a": 2}, {"a": 3}], 1)


@pytest.mark.gw("FF-04", "FF-05", "FF-06")
@pytest.mark.parametrize(
    "forbidden",
    [["z"], [], None, lambda: [], lambda: None, lambda: ["z"]],
    ids=["absent-flag", "empty", "none", "fn-empty", "fn-none", "fn-absent-flag"],
)
def test_forbidden_flags_that_forbid_nothing_present_let_every_job_run(
    make_app: Callable[..., App], db: Conn, schema: str, forbidden: Any
) -> None:
    app = make_app(forbidden_flags=forbidden)
    ran: list[list[str] | None] = []

    @app.task("job3")
    def job3(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job.flags)

    with app:
        app.migrate()
        job3.defer({}, flags=["a", "b"])
        job3.defer({}, flags=["c", "d"])
        app.run_once()
    assert sorted(map(str, ran)) == ["['a', 'b']", "['c', 'd']"]
    assert job_rows(db, schema) == {}


@pytest.mark.gw("FF-08")
def test_forbidden_flags_hold_with_prefetch(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(prefetch=10, concurrency=2, forbidden_flags=["special"])
    ran: list[str] = []

    @app.task("job3")
    def job3(payload: dict[str, str]) -> None:
        ran.append(payload["kind"])

    with app:
        app.migrate()
        job3.defer_many([{"kind": "plain"}] * 3)
        job3.defer_many([{"kind": "special"}] * 3, flags=["special"])
        app.run_once()
    assert ran == ["plain"] * 3
    left = db.execute(f'select flags, attempts from "{schema}"._private_jobs').fetchall()
    assert left == [({"special": True}, 0)] * 3


@pytest.mark.gw("AJ-11", "AJ-12")
def test_batches_mixing_tasks_and_queues_link_each_job_to_its_own(
    opened: App, db: Conn, schema: str
) -> None:
    mixed = opened.defer_raw([RawJob("job_a" if n % 2 else "job_b", {"n": n}) for n in range(512)])
    assert Counter(j.task_identifier for j in mixed) == {"job_a": 256, "job_b": 256}
    queued = opened.defer_raw([RawJob("job_a", {"n": n}, queue="one") for n in range(512)])
    assert len(queued) == 512
    assert {j.queue_name for j in queued} == {"one"}
    counts = db.execute(
        f"select task_identifier, count(*), count(*) filter (where queue_name = 'one') "
        f'from "{schema}".jobs group by 1 order by 1'
    ).fetchall()
    assert counts == [("job_a", 768, 512), ("job_b", 256, 0)]

    db.execute(f'delete from "{schema}"._private_jobs')
    runs: Counter[str] = Counter()

    @opened.task("job_a")
    def job_a(payload: dict[str, int]) -> None:
        runs["job_a"] += 1

    @opened.task("job_b")
    def job_b(payload: dict[str, int]) -> None:
        runs["job_b"] += 1

    opened.defer_raw([RawJob("job_a")] * 3 + [RawJob("job_b")] * 2)
    opened.run_once()
    assert runs == {"job_a": 3, "job_b": 2}


@pytest.mark.gw("LR-01")
def test_locks_older_than_four_hours_are_reset(opened: App, db: Conn, schema: str) -> None:
    ids = [opened.defer("job3", {}, queue=f"q{n}").id for n in range(3)]
    for job_id, age in zip(ids[1:], ("5 minutes", "4 hours 1 minute"), strict=True):
        db.execute(
            f"update \"{schema}\"._private_jobs set locked_by = 'pool-node', attempts = 1, "
            f"locked_at = now() - %s::interval where id = %s",
            (age, job_id),
        )
        db.execute(
            f"update \"{schema}\"._private_job_queues set locked_by = 'pool-node', "
            f"locked_at = now() - %s::interval where id = "
            f'(select job_queue_id from "{schema}"._private_jobs where id = %s)',
            (age, job_id),
        )
    with opened.store.connection() as conn:
        opened.store.reset_stale_locks(conn=conn)
    rows = job_rows(db, schema)
    assert [rows[i]["locked_by"] for i in ids] == [None, "pool-node", None]
    queues = db.execute(
        f'select queue_name, locked_by from "{schema}"._private_job_queues order by 1'
    ).fetchall()
    assert queues == [("q0", None), ("q1", "pool-node"), ("q2", None)]


@pytest.mark.gw("ADM-07")
def test_task_identifier_cleanup_keeps_used_and_listed_identifiers(
    opened: App, db: Conn, schema: str
) -> None:
    jobs = {
        name: opened.defer(name, {}).id for name in ["job3", *(f"test_job{n}" for n in range(1, 5))]
    }
    opened.admin.complete_jobs([jobs["test_job2"], jobs["test_job4"]])
    result = opened.admin.cleanup(gc_task_identifiers=True, task_identifiers_to_keep=["test_job4"])
    assert result.task_identifiers == 1
    names = db.execute(f'select identifier from "{schema}"._private_tasks order by 1').fetchall()
    assert [n[0] for n in names] == ["job3", "test_job1", "test_job3", "test_job4"]


@pytest.mark.gw("FF-03")
def test_forbidden_flags_from_an_async_function(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    async def forbidden() -> list[str]:
        await asyncio.sleep(0.005)
        return ["d"]

    app = make_app(forbidden_flags=forbidden)
    ran: list[list[str] | None] = []

    @app.task("job3")
    def job3(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job.flags)

    with app:
        app.migrate()
        job3.defer({}, flags=["a", "b"])
        job3.defer({}, flags=["c", "d"])
        app.run_once()
    assert ran == [["a", "b"]]
    left = db.execute(f'select flags, attempts from "{schema}"._private_jobs').fetchall()
    assert left == [({"c": True, "d": True}, 0)]
