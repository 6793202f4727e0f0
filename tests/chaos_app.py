"""The app tests/test_recovery.py runs in worker processes that it keeps killing.

Its one task, ``chaos``, records each run in the table named by ``CHAOS_RUNS_TABLE``: a
row when it starts (job id, worker id) and the end time when it finishes, with a short
sleep between, so that a killed worker leaves started-but-unfinished runs behind.
``CHAOS_RECOVERY`` gives ``heartbeat,stale_after,sweep`` seconds for ``Recovery``.
"""

from __future__ import annotations

import os
import time

import msgspec
from psycopg import sql

from pgworker import App, JobContext, Recovery

RUNS_TABLE_VARIABLE = "CHAOS_RUNS_TABLE"
#: How long one job takes, in seconds.
JOB_SECONDS = 0.04

heartbeat, stale_after, sweep = (
    float(part) for part in os.environ.get("CHAOS_RECOVERY", "10,45,15").split(",")
)
app = App(
    concurrency=2,
    recovery=Recovery(heartbeat_interval=heartbeat, stale_after=stale_after, sweep_interval=sweep),
)


class Payload(msgspec.Struct):
    n: int


@app.task("chaos")
def chaos(payload: Payload, ctx: JobContext) -> None:
    """Record the start, sleep, record the end."""
    table = sql.Identifier(os.environ[RUNS_TABLE_VARIABLE])
    with ctx.connection() as conn:
        run_id = conn.execute(
            sql.SQL("insert into {} (job_id, worker_id) values (%s, %s) returning id").format(
                table
            ),
            (ctx.job.id, ctx.worker_id),
        ).fetchone()
    time.sleep(JOB_SECONDS)
    with ctx.connection() as conn:
        conn.execute(
            sql.SQL("update {} set ended = clock_timestamp() where id = %s").format(table),
            (run_id[0] if run_id else None,),
        )
