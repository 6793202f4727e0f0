"""The local queue (``prefetch``: claiming ahead of the executors, with a TTL, a refetch
delay and a give-back on shutdown) and batched outcomes (``complete_batch_delay``,
``fail_batch_delay``), on a real PostgreSQL."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
from processes import wait_for, worker_spawner
from psycopg import sql
from test_multiprocess import (
    RUNS_TABLE_VARIABLE,
    Run,
    jobs_by_queue,
    remaining,
    runs_table,  # noqa: F401 (a fixture)
)

from pgworker import App, ConfigurationError, JobSpec, LocalQueue, Plugin, RefetchDelay
from pgworker.control import WorkerHandle
from pgworker.store import NewJob

Conn = psycopg.Connection[tuple[Any, ...]]


def locked_jobs(db: Conn, schema: str) -> list[tuple[int, str | None, int]]:
    """(id, queue name, attempts) of every locked job, by id."""
    return db.execute(
        f"select j.id, q.queue_name, j.attempts from {schema}._private_jobs as j "
        f"left join {schema}._private_job_queues as q on q.id = j.job_queue_id "
        "where j.locked_by is not null order by j.id"
    ).fetchall()


def test_a_batch_claim_takes_one_job_per_named_queue(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """graphile/worker#621: a claim of ten may not take two jobs of one named queue; it
    takes the first of each queue (by priority, run_at) and locks the queue."""
    app = make_app()

    @app.task("job")
    def job(payload: dict[str, int]) -> None: ...

    with app:
        app.migrate()
        for n in range(4):
            job.defer({"n": n}, queue="serial")
        job.defer({"n": 4}, queue="other")
        job.defer({"n": 5}, queue="other")
        job.defer({"n": 6})
        task_names = app.store.register_tasks(["job"])
        claimed = app.store.claim_jobs(worker_id="w1", task_names=task_names, limit=10)
        again = app.store.claim_jobs(worker_id="w2", task_names=task_names, limit=10)
    queues = sorted(str(c.job.queue_name) for c in claimed)
    assert queues == ["None", "other", "serial"]
    ns = {c.job.queue_name: json.loads(c.payload)["n"] for c in claimed}
    assert ns == {"serial": 0, "other": 4, None: 6}
    assert again == [], "a second worker took a job of a locked queue"
    assert [row[1] for row in locked_jobs(db, schema)] == ["serial", "other", None]


def job_rows(db: Conn, schema: str) -> list[tuple[int, str | None, int, str | None]]:
    """(payload n, locked_by, attempts, last_error) of every job, by n."""
    return db.execute(
        f"select (payload->>'n')::int, locked_by, attempts, last_error "
        f"from {schema}._private_jobs order by 1"
    ).fetchall()


def gated_app(make_app: Callable[..., App], **options: Any) -> tuple[App, Counter[int], Any]:
    """An app whose ``gated`` task counts its runs by payload ``n``; a job with
    ``"wait": true`` waits for the returned event first."""
    app = make_app(**options)
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    gate = threading.Event()

    @app.task("gated")
    def gated(payload: dict[str, Any]) -> None:
        with lock:
            runs[payload["n"]] += 1
        if payload.get("wait"):
            assert gate.wait(30), "the test never opened the gate"

    return app, runs, gate


@pytest.mark.gw("LQ-14")
def test_prefetched_jobs_that_wait_past_the_ttl_go_back_refunded(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """Ten jobs, one executor busy with the first: the nine prefetched behind it go back
    after the TTL, unlocked with the attempt refunded, and stay back (for other workers)
    until the executor is free again; then all ten run once."""
    app, runs, gate = gated_app(
        make_app, concurrency=1, prefetch=LocalQueue(size=10, ttl=0.5), poll_interval=0.2
    )
    with app:
        app.migrate()
        app.tasks["gated"].defer({"n": 0, "wait": True})
        app.tasks["gated"].defer_many([{"n": n} for n in range(1, 10)])
        with app.start() as handle:
            wait_for(lambda: runs[0] == 1, 10, "the first job to start")
            claimed_at = time.monotonic()
            locked = [r for r in job_rows(db, schema) if r[1] == handle.worker_id]
            assert len(locked) == 10, "the worker did not prefetch the other nine"

            def given_back() -> list[Any]:
                rows = job_rows(db, schema)
                back = [r for r in rows if r[1] is None]
                return back if len(back) >= 8 else []

            back = wait_for(given_back, 10, "the prefetched jobs to go back")
            assert time.monotonic() - claimed_at >= 0.3
            assert all(attempts == 0 and error is None for _, _, attempts, error in back)
            # The executor is still busy: the worker must not claim them again.
            time.sleep(0.6)
            assert len([r for r in job_rows(db, schema) if r[1] is None]) == 9
            assert sum(runs.values()) == 1
            gate.set()
            wait_for(lambda: not job_rows(db, schema), 10, "every job to run")
    assert runs == dict.fromkeys(range(10), 1)


@pytest.mark.gw("LQ-13")
def test_shutdown_gives_back_the_prefetched_jobs_that_never_started(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """Two executors busy, eight jobs waiting in the local queue: a stop gives the eight
    back at once (attempt refunded, unlocked), before the running two finish."""
    app, runs, gate = gated_app(make_app, concurrency=2, prefetch=LocalQueue(size=20))
    with app:
        app.migrate()
        app.tasks["gated"].defer_many([{"n": n, "wait": True} for n in range(10)])
        handle = app.start()
        wait_for(lambda: sum(runs.values()) == 2, 10, "two jobs to start")
        stopper = threading.Thread(target=handle.stop, kwargs={"timeout": 20})
        stopper.start()

        def eight_back() -> bool:
            return len([r for r in job_rows(db, schema) if r[1] is None]) == 8

        wait_for(eight_back, 10, "the eight waiting jobs to go back")
        assert all(r[2] == 0 for r in job_rows(db, schema) if r[1] is None)
        gate.set()
        stopper.join(20)
        assert not stopper.is_alive()
    ran = set(runs)
    assert len(ran) == 2
    assert [(n, locked_by, attempts) for n, locked_by, attempts, _ in job_rows(db, schema)] == [
        (n, None, 0) for n in range(10) if n not in ran
    ]


class EmptyFetches(Plugin):
    """Counts empty fetches, and when each job started."""

    def __init__(self) -> None:
        self.empty = 0
        self.started: list[float] = []

    def on_fetch_empty(self) -> None:
        self.empty += 1

    def on_job_started(self, job: Any) -> None:
        self.started.append(time.monotonic())


@pytest.mark.parametrize(("abort_after", "holds"), [(10**6, True), (1, False)])
def test_a_refetch_delay_holds_the_next_fetch_unless_notifications_cut_it_short(
    make_app: Callable[..., App], db: Conn, schema: str, abort_after: int, holds: bool
) -> None:
    """After an empty fetch, a job added at once waits out the refetch delay (1 to 3 s),
    though its notification wakes the worker; with an abort threshold of one, that one
    notification ends the delay and the job runs at once."""
    watcher = EmptyFetches()
    delay = RefetchDelay(2.0, threshold=0, max_abort_threshold=abort_after)
    app, runs, _ = gated_app(
        make_app,
        concurrency=2,
        poll_interval=2.0,
        prefetch=LocalQueue(size=4, refetch_delay=delay),
        plugins=[watcher],
    )
    with app:
        app.migrate()
        with app.start() as handle:
            assert handle.worker.wait_listening(10)
            seen = watcher.empty
            wait_for(lambda: watcher.empty > seen, 10, "an empty fetch")
            added = time.monotonic()
            app.tasks["gated"].defer({"n": 1})
            wait_for(lambda: runs[1] == 1, 10, "the job to run")
    waited = watcher.started[0] - added
    if holds:
        assert waited >= 0.5, f"the job ran {waited:.2f} s after it was added"
    else:
        assert waited < 0.9, f"the job ran {waited:.2f} s after it was added"


@pytest.mark.gw("LQ-09", "LQ-11")
@pytest.mark.parametrize(("duration", "threshold", "abort"), [(0.2, 5, None), (0.1, 3, 10)])
def test_jobs_below_the_refetch_threshold_still_run(
    make_app: Callable[..., App], duration: float, threshold: int, abort: int | None
) -> None:
    delay = RefetchDelay(duration, threshold=threshold, max_abort_threshold=abort)
    app, runs, _ = gated_app(make_app, concurrency=2, prefetch=LocalQueue(8, refetch_delay=delay))
    with app:
        app.migrate()
        app.tasks["gated"].defer_many([{"n": n} for n in range(5)])
        app.run_once()
        with app.start():
            for n in range(5, 8):
                app.tasks["gated"].defer({"n": n})
            wait_for(lambda: len(runs) == 8, 10, "the jobs added one by one")
    assert runs == dict.fromkeys(range(8), 1)


@pytest.mark.gw("LQ-10")
def test_notifications_end_a_long_refetch_delay(make_app: Callable[..., App]) -> None:
    """A 30 s delay (poll 30 s), abort threshold 3: five jobs 50 ms apart all run well
    before the delay could have run out."""
    delay = RefetchDelay(30.0, threshold=0, max_abort_threshold=3)
    app, runs, _ = gated_app(
        make_app, concurrency=2, poll_interval=30.0, prefetch=LocalQueue(4, refetch_delay=delay)
    )
    with app:
        app.migrate()
        with app.start() as handle:
            assert handle.worker.wait_listening(10)
            started = time.monotonic()
            for n in range(5):
                app.tasks["gated"].defer({"n": n})
                time.sleep(0.05)
            wait_for(lambda: len(runs) == 5, 12, "the five jobs")
            assert time.monotonic() - started < 12
    assert runs == dict.fromkeys(range(5), 1)


@pytest.mark.gw("LQ-12")
def test_local_queue_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="must not be longer than poll_interval"):
        App(poll_interval=1.0, prefetch=LocalQueue(4, refetch_delay=RefetchDelay(2.0)))
    app = App(poll_interval=3.0, prefetch=LocalQueue(4, refetch_delay=RefetchDelay(2.0)))
    app.configure(poll_interval=1.0)
    with pytest.raises(ConfigurationError, match="poll_interval"):
        app._worker()
    with pytest.raises(ConfigurationError, match="ttl"):
        LocalQueue(4, ttl=0)
    with pytest.raises(ConfigurationError, match="prefetch"):
        App(prefetch=-1)
    with pytest.raises(ConfigurationError, match="threshold"):
        RefetchDelay(0.1, threshold=-1)
    with pytest.raises(ConfigurationError, match="complete_batch_delay"):
        App(complete_batch_delay=-0.1)
    assert App(prefetch=3).local_queue == LocalQueue(size=3)


def started_and_idle(app: App) -> WorkerHandle:
    """Start a worker of ``app`` and wait until it listens and the claim that follows
    connecting is done: with a long poll interval, only a notification wakes it now."""
    handle = app.start()
    listener = handle.worker.listener
    assert listener is not None
    wait_for(lambda: listener.is_listening, 10, "the worker to listen")
    time.sleep(0.2)
    return handle


@pytest.mark.gw("LQ-19")
def test_batched_outcomes_are_flushed_on_shutdown(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """With 30 s batch delays, a stop right after the jobs ran writes their outcomes at
    once: the successes are deleted, the failure recorded and unlocked. (One claim takes
    the four jobs with room for five, so no claim follows to complete the successes.)"""
    app = make_app(
        concurrency=5, complete_batch_delay=30.0, fail_batch_delay=30.0, poll_interval=60.0
    )
    ran: list[int] = []

    @app.task("job")
    def job(payload: dict[str, int]) -> None:
        ran.append(payload["n"])
        if payload["n"] == 3:
            raise RuntimeError("three fails")

    with app:
        app.migrate()
        handle = started_and_idle(app)
        job.defer_many([{"n": n} for n in range(4)])
        wait_for(lambda: len(ran) == 4, 10, "the four jobs to run")
        assert len(job_rows(db, schema)) == 4, "an outcome was written before its delay"
        stopped = time.monotonic()
        handle.stop(timeout=20)
        assert time.monotonic() - stopped < 10
    rows = job_rows(db, schema)
    assert [(n, locked_by, attempts) for n, locked_by, attempts, _ in rows] == [(3, None, 1)]
    assert "three fails" in str(rows[0][3])


class Completions(Plugin):
    """When each job's success was reported (after its batch was written)."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def on_job_completed(self, job: Any, duration_ms: float) -> None:
        self.at.append(time.monotonic())


@pytest.mark.gw("LQ-18")
def test_a_complete_batch_delay_gathers_successes(make_app: Callable[..., App]) -> None:
    """With a 1 s delay and no claim coming (one claim took the ten jobs, with room for
    eleven, and nothing wakes the fetcher after), no success is written until a second
    after the first finished."""
    completions = Completions()
    app = make_app(
        concurrency=11, complete_batch_delay=1.0, poll_interval=60.0, plugins=[completions]
    )
    finished: list[float] = []

    @app.task("job")
    def job(payload: dict[str, int]) -> None:
        finished.append(time.monotonic())

    with app:
        app.migrate()
        with started_and_idle(app):
            job.defer_many([{"n": n} for n in range(10)])
            wait_for(lambda: len(completions.at) == 10, 15, "ten completions")
    assert min(completions.at) - min(finished) >= 0.9


def blocked_flush(db: Conn, schema: str, other_than: int | None = None) -> int | None:
    """The pid of a backend whose complete_jobs statement, or claim that completes jobs,
    on ``schema`` waits for a row lock (not ``other_than``), or None."""
    row = db.execute(
        "select pid from pg_stat_activity where datname = current_database() "
        "and wait_event_type = 'Lock' and query like 'with done as%%' "
        "and position(%s in query) > 0 and pid is distinct from %s",
        (schema, other_than),
    ).fetchone()
    return None if row is None else int(row[0])


def test_no_completion_is_lost_when_the_connection_drops_mid_flush(
    make_app: Callable[..., App], db: Conn, database_url: str, schema: str
) -> None:
    """A test transaction locks one job's row, so the flush of five completions blocks;
    its backend is terminated; the completer reconnects and retries (blocking again);
    once the lock is released every completion is written, and no job ran twice. (One
    claim takes the five jobs with room for six, so the completer writes them, not a
    claim: tests/test_completion_fold.py has the claim's case.)"""
    app, runs, gate = gated_app(
        make_app, concurrency=6, complete_batch_delay=0.2, poll_interval=60.0
    )
    with app:
        app.migrate()
        jobs = app.tasks["gated"].defer_many([{"n": n, "wait": True} for n in range(5)])
        with app.start() as handle, psycopg.connect(database_url) as locker:
            wait_for(lambda: sum(runs.values()) == 5, 10, "the five jobs to start")
            locker.execute(
                f"select 1 from {schema}._private_jobs where id = %s for update", (jobs[2].id,)
            )
            gate.set()
            first = wait_for(lambda: blocked_flush(db, schema), 10, "the flush to block")
            db.execute("select pg_terminate_backend(%s)", (first,))
            wait_for(lambda: blocked_flush(db, schema, first), 15, "the retried flush to block")
            assert len(job_rows(db, schema)) == 5, "a flush was written in part"
            locker.rollback()
            wait_for(lambda: not job_rows(db, schema), 10, "the completions to be written")
            wait_for(lambda: not handle.worker.inflight.unsettled, 5, "the jobs to settle")
    assert runs == dict.fromkeys(range(5), 1)


PROCESSES = 4
SERIAL_QUEUES = ("alpha", "beta")
SERIAL_JOBS = 40  # per queue
OTHER_JOBS = 200


def test_named_queues_stay_serial_and_ordered_across_four_prefetching_processes(
    database_url: str,
    schema: str,
    runs_table: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """Four ``pgworker run --prefetch 8`` processes on one schema: each job runs once, and
    the runs of each named queue never overlap (the task sleeps, so an overlap would
    show) and follow (priority, run_at)."""
    rng = random.Random(621)
    now = datetime.now(UTC)
    queues = [q for q in SERIAL_QUEUES for _ in range(SERIAL_JOBS)] + [None] * OTHER_JOBS
    rng.shuffle(queues)
    new_jobs = [
        NewJob(
            "record",
            json.dumps({"n": n}),
            JobSpec(
                queue=queue,
                priority=rng.choice((-1, 0, 1)),
                run_at=now - timedelta(seconds=rng.randrange(600)),
            ),
        )
        for n, queue in enumerate(queues)
    ]
    with App(database_url=database_url, schema=schema) as app:
        app.migrate()
        app.store.add_jobs(new_jobs, preserve_run_at=False)
    with psycopg.connect(database_url, autocommit=True) as conn:
        expected = jobs_by_queue(conn, schema)
    env = {RUNS_TABLE_VARIABLE: runs_table}
    args = ("--prefetch", "8", "--concurrency", "4")
    workers = worker_spawner(database_url, schema, tmp_path)
    spawn = next(workers)
    try:
        procs = [spawn("multiprocess_app:app", extra_args=args, **env) for _ in range(PROCESSES)]
        with psycopg.connect(database_url, autocommit=True) as conn:
            wait_for(
                lambda: all(p.running() for p in procs) and remaining(conn, schema) == 0,
                90,
                "the queue to drain",
                detail=lambda: "\n".join(p.log() for p in procs),
            )
        for proc in procs:
            proc.signal(signal.SIGTERM)
        assert [proc.wait_exit(30) for proc in procs] == [0] * PROCESSES
    finally:
        workers.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        runs = [
            Run(*row)
            for row in conn.execute(
                sql.SQL(
                    "select job_id, queue_name, started_ns, ended_ns, n, worker_id from {}"
                ).format(sql.Identifier(runs_table))
            )
        ]
    assert Counter(run.n for run in runs) == dict.fromkeys(range(len(queues)), 1)
    for queue_name in SERIAL_QUEUES:
        queue_runs = sorted(
            (r for r in runs if r.queue_name == queue_name), key=lambda r: r.started_ns
        )
        overlaps = [
            (a.job_id, b.job_id) for a, b in pairwise(queue_runs) if a.ended_ns > b.started_ns
        ]
        assert not overlaps, f"queue {queue_name}: runs overlapped: {overlaps}"
        keys = [expected[queue_name][r.job_id] for r in queue_runs]
        assert keys == sorted(keys), f"queue {queue_name} ran out of (priority, run_at) order"
    assert len({run.worker_id for run in runs}) >= 2, "the jobs did not spread over processes"
