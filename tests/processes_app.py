"""The app that tests/test_processes.py and tests/test_pgbouncer.py run under
``pgworker run --processes N``.

Test code: the settings come from environment variables read at import time; the
database and schema come from the CLI's ``--database-url`` and ``--schema``.

- ``PROCESSES_LEDGER``: the table each run of a job writes a row into: the job id, the
  event (``started`` before the task's work, ``done`` after it), the process id and the
  worker id. A job run twice shows twice.
- ``PROCESSES_RECOVERY``: ``heartbeat,stale_after,sweep`` seconds for ``Recovery``.

Tasks: ``noop`` (the benchmark's job: a ledger row), ``nap`` (sleeps ``seconds``) and
``hog`` (keeps ``megabytes`` of memory until the process exits).
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
from psycopg import sql

from pgworker import App, JobContext, Recovery


def _recovery() -> Recovery:
    setting = os.environ.get("PROCESSES_RECOVERY")
    if not setting:
        return Recovery()
    heartbeat, stale_after, sweep = (float(part) for part in setting.split(","))
    return Recovery(heartbeat_interval=heartbeat, stale_after=stale_after, sweep_interval=sweep)


app = App(recovery=_recovery(), shutdown_grace_period=10.0, interrupted_retry_delay=0.0)

#: Memory the ``hog`` jobs of this process hold on to.
_hoard: list[bytes] = []


def write_ledger(ctx: JobContext, event: str) -> None:
    """One row for this run of the job, on a connection of the app's pool."""
    insert = sql.SQL("insert into {} (job_id, event, pid, worker_id) values (%s, %s, %s, %s)")
    table = sql.Identifier(os.environ["PROCESSES_LEDGER"])
    with ctx.connection() as conn:
        conn.execute(insert.format(table), (ctx.job.id, event, os.getpid(), ctx.worker_id))


class Nap(msgspec.Struct):
    seconds: float


class Hog(msgspec.Struct):
    megabytes: int


@app.task("noop")
def noop(payload: dict[str, Any], ctx: JobContext) -> None:
    write_ledger(ctx, "done")


@app.task("nap")
def nap(payload: Nap, ctx: JobContext) -> None:
    write_ledger(ctx, "started")
    time.sleep(payload.seconds)
    write_ledger(ctx, "done")


@app.task("hog")
def hog(payload: Hog, ctx: JobContext) -> None:
    # Written byte by byte (not calloc'd zeros), so the pages are resident.
    _hoard.append(b"\x01" * (payload.megabytes * 2**20))
    write_ledger(ctx, "done")
