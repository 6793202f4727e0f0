"""The app the fault harness and tests/test_pg_restart.py run (``pgworker run
faults.app:app``): one task that writes its start and finish into a ledger table.

Settings come from environment variables, read at import time (this is a test app):

- ``FAULTS_LEDGER_URL``: the database holding the ledger table (required to run jobs).
- ``FAULTS_CONCURRENCY``: sync jobs at once (default 4).
- ``FAULTS_RECOVERY``: ``heartbeat,stale_after,sweep`` seconds (default ``1,5,1``: a
  SIGKILLed worker's jobs come back within seconds, not pgworker's default minute).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import msgspec
import psycopg

from faults.ledger import record
from pgworker import App, JobContext, Recovery

#: The application_name of the ledger's connections, so that a fault that cuts the
#: worker's connections can leave these alone.
LEDGER_APPLICATION = "faults-ledger"
#: How long a ledger write keeps retrying (reconnecting) through an outage.
LEDGER_RETRY_SECONDS = 120.0


def _recovery() -> Recovery:
    heartbeat, stale_after, sweep = (
        float(part) for part in os.environ.get("FAULTS_RECOVERY", "1,5,1").split(",")
    )
    return Recovery(heartbeat_interval=heartbeat, stale_after=stale_after, sweep_interval=sweep)


app = App(
    concurrency=int(os.environ.get("FAULTS_CONCURRENCY", "4")),
    recovery=_recovery(),
    shutdown_grace_period=10.0,
    interrupted_retry_delay=1.0,
)


class Work(msgspec.Struct):
    """Sleep ``seconds`` between writing the start and the finish."""

    seconds: float = 0.1


class _Ledger(threading.local):
    conn: psycopg.Connection[tuple[Any, ...]] | None = None


_ledger = _Ledger()


def _write(job_id: int, event: str, worker: str) -> None:
    """Write one ledger row on this thread's own connection, reconnecting and retrying
    through an outage (a job must not fail because the ledger was briefly away)."""
    deadline = time.monotonic() + LEDGER_RETRY_SECONDS
    while True:
        try:
            conn = _ledger.conn
            if conn is None or conn.closed or conn.broken:
                conn = _ledger.conn = psycopg.connect(
                    os.environ["FAULTS_LEDGER_URL"],
                    autocommit=True,
                    connect_timeout=5,
                    application_name=LEDGER_APPLICATION,
                )
            record(conn, job_id, event, worker)
            return
        except psycopg.OperationalError:
            if _ledger.conn is not None:
                _ledger.conn.close()
                _ledger.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@app.task("ledger_job")
def ledger_job(work: Work, ctx: JobContext) -> None:
    """Record the start, sleep, record the finish."""
    _write(ctx.job.id, "start", ctx.worker_id)
    time.sleep(work.seconds)
    _write(ctx.job.id, "finish", ctx.worker_id)
