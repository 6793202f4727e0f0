"""The app that tests/test_multiprocess.py runs in several ``pgworker run`` processes.

Its one task, ``record``, writes a row per run into the table named by the environment
variable ``PGWORKER_TEST_RUNS_TABLE``: the job id, its queue, when the task started and
ended (CLOCK_MONOTONIC in nanoseconds, one clock for every process on the machine), the
payload's ``n`` and the worker id. A job of a named queue also sleeps a little, so that
two runs of one queue that overlapped would show it.
"""

from __future__ import annotations

import os
import time

import msgspec
from psycopg import sql

from pgworker import App, JobContext

RUNS_TABLE_VARIABLE = "PGWORKER_TEST_RUNS_TABLE"
#: How long a job of a named queue lasts, in seconds.
QUEUED_JOB_SECONDS = 0.002

app = App()


class Payload(msgspec.Struct):
    n: int


@app.task("record")
def record(payload: Payload, ctx: JobContext) -> None:
    """Record this run."""
    started = time.monotonic_ns()
    if ctx.job.queue_name is not None:
        time.sleep(QUEUED_JOB_SECONDS)
    ended = time.monotonic_ns()
    insert = sql.SQL(
        "insert into {} (job_id, queue_name, started_ns, ended_ns, n, worker_id) "
        "values (%s, %s, %s, %s, %s, %s)"
    ).format(sql.Identifier(os.environ[RUNS_TABLE_VARIABLE]))
    with ctx.connection() as conn:
        conn.execute(
            insert, (ctx.job.id, ctx.job.queue_name, started, ended, payload.n, ctx.worker_id)
        )
