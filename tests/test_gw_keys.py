"""Job keys as graphile-worker's suites exercise them: mode sequences, keyed jobs that are
pending, running, finished or failing, and keyed batches (ids in tests/behaviours.toml)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgworker import App, JobContext, RawJob

Conn = psycopg.Connection[tuple[Any, ...]]

R1, R2, R3, R4 = (datetime(2200 + n, 1, 1, 12, 0, 0, 123000, tzinfo=UTC) for n in range(4))


def rows(db: Conn, schema: str) -> list[dict[str, Any]]:
    cursor = db.execute(f'select * from "{schema}"._private_jobs order by id')
    names = [c.name for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.mark.gw("ADD-08", "ADD-09", "ADD-10", "ADD-11", "EDGE-02", "EDGE-05")
def test_each_job_key_mode_in_turn_on_one_key(opened: App, db: Conn, schema: str) -> None:
    first = opened.defer("job3", {"a": 1}, job_key="k", job_key_mode="replace", run_at=R1)
    assert isinstance(first.id, int)
    assert (first.revision, first.run_at) == (0, R1)
    preserved = opened.defer(
        "job3", {"a": 2}, job_key="k", job_key_mode="preserve_run_at", run_at=R2
    )
    assert (preserved.id, preserved.revision, preserved.run_at) == (first.id, 1, R1)
    deduped = opened.defer("job3", {"a": 3}, job_key="k", job_key_mode="unsafe_dedupe", run_at=R3)
    assert (deduped.id, deduped.revision, deduped.run_at) == (first.id, 2, R1)
    assert [r["payload"] for r in rows(db, schema)] == [{"a": 2}]
    replaced = opened.defer("job3", {"a": 4}, job_key="k", job_key_mode="replace", run_at=R4)
    assert (replaced.id, replaced.revision, replaced.run_at) == (first.id, 3, R4)
    [stored] = rows(db, schema)
    assert (stored["payload"], stored["run_at"], stored["revision"]) == ({"a": 4}, R4, 3)
    assert (stored["id"], stored["key"], stored["attempts"]) == (replaced.id, "k", 0)


@pytest.fixture
def recorded(opened: App) -> list[Any]:
    """Payloads of the ``job3`` task, in the order it ran them."""
    ran: list[Any] = []

    @opened.task("job3")
    def job3(payload: dict[str, Any]) -> None:
        ran.append(payload)

    return ran


@pytest.mark.gw("ADD-12")
def test_a_pending_keyed_job_is_brought_forward_and_runs_once_with_the_new_payload(
    opened: App, recorded: list[Any], db: Conn, schema: str
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=60)
    wrong = opened.defer("job3", {"right": False}, job_key="abc", run_at=later)
    opened.run_once()
    assert recorded == []
    right = opened.defer("job3", {"right": True}, job_key="abc", run_at=datetime.now(UTC))
    assert right.id == wrong.id
    assert right.run_at < later
    opened.run_once()
    assert recorded == [{"right": True}]
    assert rows(db, schema) == []


@pytest.mark.gw("ADD-13")
def test_a_key_whose_job_already_ran_makes_a_new_job(
    opened: App, recorded: list[Any], db: Conn, schema: str
) -> None:
    first = opened.defer("job3", {"a": 1}, job_key="abc")
    opened.run_once()
    second = opened.defer("job3", {"a": 2}, job_key="abc")
    assert second.id != first.id
    opened.run_once()
    assert recorded == [{"a": 1}, {"a": 2}]
    assert rows(db, schema) == []


@pytest.mark.gw("ADD-14", "F-06")
def test_a_running_keyed_job_gets_a_successor_that_the_same_pass_runs(
    make_app: Any, db: Conn, schema: str
) -> None:
    app = make_app(concurrency=1)
    ran: list[tuple[int, str]] = []
    seen_rows: list[int] = []

    @app.task("job3")
    def job3(payload: dict[str, int], ctx: JobContext) -> None:
        ran.append((payload["n"], ctx.worker_id))
        if payload["n"] == 1:
            job3.defer({"n": 2}, job_key="abc")
            seen_rows.append(len(rows(db, schema)))

    with app:
        app.migrate()
        job3.defer({"n": 1}, job_key="abc")
        app.run_once()
    assert seen_rows == [2]  # the running job and its successor
    assert [n for n, _ in ran] == [1, 2]
    assert ran[0][1] == ran[1][1]  # the same worker
    assert rows(db, schema) == []


@pytest.mark.gw("ADD-15")
def test_concurrent_replacements_of_a_running_keyed_job_leave_one_keyed_row(
    make_app: Any, db: Conn, schema: str
) -> None:
    app = make_app(max_pool_size=4)
    with app:
        app.migrate()
        original = app.defer("job3", {"v": "original"}, job_key="k")
        db.execute(
            f"update \"{schema}\"._private_jobs set locked_by = 'w', locked_at = now(), "
            "attempts = 1 where id = %s",
            (original.id,),
        )
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def replace(value: str) -> None:
            try:
                barrier.wait(5)
                app.defer("job3", {"v": value}, job_key="k")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=replace, args=(v,)) for v in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert errors == []
    by_id = {r["id"]: r for r in rows(db, schema)}
    old = by_id.pop(original.id)
    assert (old["key"], old["attempts"]) == (None, old["max_attempts"])
    [keyed] = by_id.values()
    assert keyed["key"] == "k"
    assert keyed["payload"] in ({"v": "a"}, {"v": "b"})
    assert keyed["revision"] == 1  # the second replacement updated the first one's row


@pytest.mark.gw("ADD-20")
def test_remove_job_on_a_running_job_lets_it_finish_once(
    opened: App, db: Conn, schema: str
) -> None:
    calls: list[Any] = []

    @opened.task("job3")
    def job3(payload: dict[str, Any]) -> None:
        calls.append(payload)
        removed = opened.admin.remove_job("abc")
        assert removed is not None
        [still_there] = rows(db, schema)  # locked, so kept, but disarmed
        assert (still_there["key"], still_there["attempts"]) == (None, still_there["max_attempts"])

    opened.defer("job3", {"a": 1}, job_key="abc")
    opened.run_once()
    assert calls == [{"a": 1}]
    assert rows(db, schema) == []


@pytest.mark.gw("AJ-02", "AJ-03", "AJ-04", "AJ-05")
def test_keyed_batches_replace_or_preserve_run_at(opened: App, db: Conn, schema: str) -> None:
    [first] = opened.defer_raw([RawJob("job3", {"a": 1}, job_key="U", run_at=R1)])
    assert (first.revision, first.run_at) == (0, R1)
    [preserved] = opened.defer_raw(
        [RawJob("job3", {"a": 2}, job_key="U", job_key_mode="preserve_run_at", run_at=R2)]
    )
    assert (preserved.id, preserved.revision, preserved.run_at) == (first.id, 1, R1)
    assert [r["payload"] for r in rows(db, schema)] == [{"a": 2}]
    [replaced] = opened.defer_raw([RawJob("job3", {"a": 3}, job_key="U", run_at=R3)])
    assert (replaced.id, replaced.revision, replaced.run_at) == (first.id, 2, R3)
    opened.defer_raw([RawJob("job3", {"a": 4}, job_key="U")])
    [stored] = rows(db, schema)
    assert (stored["payload"], stored["revision"]) == ({"a": 4}, 3)


@pytest.mark.gw("FL-03")
def test_a_keyed_job_that_fails_keeps_its_id_and_waits(opened: App, db: Conn, schema: str) -> None:
    @opened.task("job3")
    def job3(payload: dict[str, Any]) -> None:
        raise RuntimeError("TEST_ERROR")

    job = opened.defer("job3", {}, job_key="abc")
    opened.run_once()
    [failed] = rows(db, schema)
    assert (failed["id"], failed["key"], failed["attempts"]) == (job.id, "abc", 1)
    assert failed["last_error"] == "RuntimeError: TEST_ERROR"
    assert failed["run_at"] >= job.run_at + timedelta(milliseconds=200)
