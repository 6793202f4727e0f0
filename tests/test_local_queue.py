"""The local queue (``prefetch``: claiming ahead of the executors, with a TTL, a refetch
delay and a give-back on shutdown) and batched outcomes (``complete_batch_delay``,
``fail_batch_delay``), on a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from pgworker import App

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
