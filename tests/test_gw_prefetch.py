"""Prefetch (pgworker's local queue: claiming beyond the running jobs) and batched
outcomes, under the cases of the Rust port's local-queue and batcher suites (ids in
tests/behaviours.toml)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from processes import wait_for

from pgworker import App

Conn = psycopg.Connection[tuple[Any, ...]]


def count_jobs(db: Conn, schema: str) -> int:
    row = db.execute(f'select count(*) from "{schema}"._private_jobs').fetchone()
    assert row is not None
    return int(row[0])


def counting_app(make_app: Callable[..., App], **options: Any) -> tuple[App, Counter[int]]:
    """An app whose ``job3`` task counts the runs of each payload ``n``."""
    app = make_app(**options)
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    @app.task("job3")
    def job3(payload: dict[str, int]) -> None:
        with lock:
            runs[payload["n"]] += 1

    return app, runs


@pytest.mark.gw("LQ-01", "LQ-02", "LQ-04", "LQ-18")
@pytest.mark.parametrize(
    ("jobs", "concurrency", "prefetch"),
    [(20, 5, 50), (100, 10, 50), (5, 1, 1), (10, 4, 10)],
)
def test_every_prefetched_job_runs_once(
    make_app: Callable[..., App], db: Conn, schema: str, jobs: int, concurrency: int, prefetch: int
) -> None:
    app, runs = counting_app(make_app, concurrency=concurrency, prefetch=prefetch)
    with app:
        app.migrate()
        app.tasks["job3"].defer_many([{"n": n} for n in range(jobs)])
        app.run_once()
    assert runs == dict.fromkeys(range(jobs), 1)
    assert count_jobs(db, schema) == 0


@pytest.mark.gw("LQ-03", "LQ-05", "LQ-07", "LQ-08")
def test_a_prefetching_worker_takes_jobs_added_one_by_one_and_after_idling(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    # A 30 s poll: only notifications can explain prompt pickups.
    app, runs = counting_app(make_app, concurrency=3, prefetch=10, poll_interval=30)
    with app:
        app.migrate()
        with app.start() as handle:
            assert handle.worker.wait_listening(5)
            time.sleep(0.2)  # idle on an empty queue first
            for n in range(5):
                started = time.monotonic()
                app.tasks["job3"].defer({"n": n})
                wait_for(lambda n=n: runs[n] == 1, 5, f"job {n}")
                assert time.monotonic() - started < 2.0
            time.sleep(0.3)  # idle again
            app.tasks["job3"].defer_many([{"n": n} for n in range(5, 8)])
            wait_for(lambda: count_jobs(db, schema) == 0, 5, "the last three jobs")
    assert runs == dict.fromkeys(range(8), 1)


@pytest.mark.gw("LQ-06")
def test_prefetched_slow_jobs_run_side_by_side(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=5, prefetch=20)

    @app.task("slow")
    def slow(payload: dict[str, int]) -> None:
        time.sleep(0.1)

    with app:
        app.migrate()
        slow.defer_many([{"n": n} for n in range(10)])
        started = time.monotonic()
        app.run_once()
        elapsed = time.monotonic() - started
    assert elapsed < 0.8, f"10 jobs of 0.1 s on 5 threads took {elapsed:.2f} s"


@pytest.mark.gw("LQ-20", "LQ-22")
def test_batched_outcomes_record_each_success_and_failure_once(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(concurrency=8, prefetch=8)
    calls: Counter[int] = Counter()
    lock = threading.Lock()

    @app.task("job3")
    def job3(payload: dict[str, int]) -> None:
        with lock:
            calls[payload["n"]] += 1
        if payload["n"] % 2:
            raise RuntimeError(f"odd {payload['n']}")

    with app:
        app.migrate()
        job3.defer_many([{"n": n} for n in range(10)], max_attempts=1)
        app.run_once()
    assert calls == dict.fromkeys(range(10), 1)
    left = db.execute(
        f'select payload, attempts, max_attempts, locked_by from "{schema}"._private_jobs '
        "order by id"
    ).fetchall()
    assert left == [({"n": n}, 1, 1, None) for n in range(1, 10, 2)]
