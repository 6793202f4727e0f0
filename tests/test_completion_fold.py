"""Successes completed by the worker's next claim, in the claim's own statement: the
store's claim, the worker's hand-over between fetcher and completer, and a claim whose
connection drops while it completes, on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
from processes import wait_for
from test_local_queue import blocked_flush, gated_app, job_rows

from pgworker import App

Conn = psycopg.Connection[tuple[Any, ...]]


def lock_state(db: Conn, schema: str) -> tuple[list[tuple[int, str | None]], dict[str, str | None]]:
    """(payload n, locked_by) of every job by n, and who locks each named queue."""
    jobs = [(n, locked_by) for n, locked_by, _, _ in job_rows(db, schema)]
    queues = db.execute(f"select queue_name, locked_by from {schema}._private_job_queues")
    return jobs, dict(queues.fetchall())


def test_a_claim_completes_this_workers_jobs_and_unlocks_their_queues(
    opened: App, db: Conn, schema: str
) -> None:
    """``claim_jobs(completed=...)`` deletes the given jobs that this worker locks (not
    another worker's) and unlocks their queues; the same statement does not claim the
    next job of a queue it unlocks (its snapshot shows the queue locked), the next claim
    does."""
    job = opened.task("job")(lambda payload: None)
    for n in range(3):
        job.defer({"n": n}, queue="serial")
    job.defer({"n": 3})
    store = opened.store
    task_names = {store.register_tasks(["job"]).popitem()[0]: "job"}

    def claim(worker: str, limit: int, completed: Sequence[int] = ()) -> list[int]:
        jobs = store.claim_jobs(
            worker_id=worker, task_names=task_names, limit=limit, completed=completed
        )
        return sorted(c.job.id for c in jobs)

    first, other = claim("w1", 1), claim("w2", 1)  # n=0 (serial) and n=3
    assert lock_state(db, schema) == (
        [(0, "w1"), (1, None), (2, None), (3, "w2")],
        {"serial": "w1"},
    )

    # w1 completes n=0, and names w2's job too: that one is not w1's to complete.
    assert claim("w1", 5, completed=first + other) == []
    assert lock_state(db, schema) == ([(1, None), (2, None), (3, "w2")], {"serial": None})
    second = claim("w1", 5)
    assert lock_state(db, schema) == ([(1, "w1"), (2, None), (3, "w2")], {"serial": "w1"})

    # Completing and claiming in one statement: n=1 goes, n=2 waits for the next claim.
    assert claim("w1", 5, completed=second) == []
    assert claim("w1", 5, completed=()) != []
    assert lock_state(db, schema) == ([(2, "w1"), (3, "w2")], {"serial": "w1"})


class Spy:
    """Records, on a worker's store, what each claim completed and each complete_jobs."""

    def __init__(self, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims: list[list[int]] = []
        self.completes: list[list[int]] = []
        store = app.store
        claim, complete = store.claim_jobs, store.complete_jobs

        def claim_jobs(**kwargs: Any) -> Any:
            self.claims.append(list(kwargs.get("completed", ())))
            return claim(**kwargs)

        def complete_jobs(job_ids: Sequence[int], **kwargs: Any) -> None:
            self.completes.append(list(job_ids))
            complete(job_ids, **kwargs)

        monkeypatch.setattr(store, "claim_jobs", claim_jobs)
        monkeypatch.setattr(store, "complete_jobs", complete_jobs)

    @property
    def completed_by_claims(self) -> list[int]:
        return [job_id for ids in self.claims for job_id in ids]


def test_successes_go_out_with_the_claim_their_freed_slot_starts(
    make_app: Callable[..., App], db: Conn, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One executor, three jobs: each success is completed by the claim that its freed
    slot starts, the last by a claim that finds nothing; the completer writes none of
    them itself (its 30 s delay would hold them: only the claims can have)."""
    app = make_app(concurrency=1, complete_batch_delay=30.0, poll_interval=60.0)
    ran: list[int] = []
    job = app.task("job")(lambda payload: ran.append(payload["n"]))
    with app:
        app.migrate()
        ids = [j.id for j in job.defer_many([{"n": n} for n in range(3)])]
        spy = Spy(app, monkeypatch)
        with app.start() as handle:
            wait_for(lambda: not job_rows(db, schema), 10, "the three jobs to be completed")
            wait_for(lambda: not handle.worker.inflight.unsettled, 5, "the jobs to settle")
    assert ran == [0, 1, 2]
    assert [completed for completed in spy.claims if completed] == [[i] for i in ids]
    assert spy.completes == []


def test_no_success_is_lost_when_the_claim_completing_it_loses_its_connection(
    make_app: Callable[..., App],
    db: Conn,
    database_url: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test transaction locks the job's row, so the claim that completes it blocks; its
    backend is terminated; the success goes back to the completer, whose write blocks
    too; once the lock is released the job is completed, having run once."""
    app, runs, gate = gated_app(
        make_app, concurrency=1, complete_batch_delay=30.0, poll_interval=60.0
    )
    with app:
        app.migrate()
        (job,) = app.tasks["gated"].defer_many([{"n": 0, "wait": True}])
        spy = Spy(app, monkeypatch)
        with app.start() as handle, psycopg.connect(database_url) as locker:
            wait_for(lambda: runs[0] == 1, 10, "the job to start")
            locker.execute(
                f"select 1 from {schema}._private_jobs where id = %s for update", (job.id,)
            )
            gate.set()
            claim = wait_for(lambda: blocked_flush(db, schema), 10, "the claim to block")
            assert spy.completed_by_claims == [job.id]
            db.execute("select pg_terminate_backend(%s)", (claim,))
            wait_for(lambda: blocked_flush(db, schema, claim), 15, "the completer to block")
            assert spy.completes == [[job.id]]
            assert len(job_rows(db, schema)) == 1
            locker.rollback()
            wait_for(lambda: not job_rows(db, schema), 10, "the completion to be written")
            wait_for(lambda: not handle.worker.inflight.unsettled, 5, "the job to settle")
    assert runs == {0: 1}


def test_a_success_waits_for_no_claim_when_the_fetcher_is_idle(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    """A claim that found nothing leaves the fetcher idle until a notification or a
    poll: a success that finishes then is written by the completer at once (no delay is
    set), not held for a claim that isn't coming."""
    app = make_app(concurrency=2, poll_interval=60.0)
    go = threading.Event()

    @app.task("job")
    def job(payload: dict[str, int]) -> None:
        assert go.wait(10)

    with app:
        app.migrate()
        job.defer({"n": 0})
        with app.start() as handle:
            wait_for(lambda: handle.worker.inflight.running, 10, "the job to start")
            fetcher = handle.worker.fetcher
            assert fetcher is not None
            wait_for(lambda: not fetcher.claims_soon(), 10, "the fetcher to go idle")
            go.set()
            wait_for(lambda: not job_rows(db, schema), 2, "the completion to be written")
