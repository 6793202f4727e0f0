"""PostgreSQL restarted under a running worker (issue 12, acceptance point 1).

A private cluster (faults.cluster: initdb in a temporary directory, a free loopback
port), a ``pgworker run faults.app:app`` subprocess with 4 threads, jobs added steadily;
every job writes its start and finish into a ledger table on its own connection. The
server is restarted with ``-m fast``, or stopped with ``-m immediate`` (a crash) and
started a few seconds later. Every job added must then finish, exactly once unless it
was running at the moment of the restart; the worker must live on and pick up the
first job added after the restart within 10 s of the server accepting connections.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from processes import WorkerProcess, wait_for

from faults import ledger
from faults.cluster import Cluster
from faults.load import Load
from faults.workers import start_pgworker
from pgworker import App

pytestmark = pytest.mark.slow

#: Acceptance point 1: the worker resumes within this many seconds.
RESUME_WITHIN = 10.0
JOB_SECONDS = 0.3
RATE = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this module's own, which its tests stop and start."""
    with Cluster() as server:
        yield server


@pytest.fixture
def conn(cluster: Cluster) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection for the ledger and checks (reopened after restarts)."""
    with psycopg.connect(cluster.url, autocommit=True) as connection:
        ledger.create(connection)
        yield connection


def fresh(cluster: Cluster) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(cluster.url, autocommit=True)


@pytest.mark.parametrize(("mode", "down_seconds"), [("fast", 0.0), ("immediate", 3.0)])
def test_worker_resumes_after_postgres_restart(
    cluster: Cluster,
    conn: psycopg.Connection[tuple[Any, ...]],
    tmp_path: Path,
    mode: str,
    down_seconds: float,
) -> None:
    schema = f"pgw_restart_{secrets.token_hex(4)}"
    client = App(database_url=cluster.url, schema=schema, embedded=False, pool_timeout=2.0)
    client.open()
    client.migrate()
    log = tmp_path / "worker.log"
    worker = WorkerProcess(
        start_pgworker(cluster.url, schema, log, concurrency=4, poll_interval=0.5), log, tmp_path
    )
    load = Load(client, rate=RATE, seconds=JOB_SECONDS)
    try:
        worker.worker_id()
        load.start()

        def warmed_up() -> bool:
            worker.running()
            found = ledger.events(conn)
            finished = sum(1 for e in found if e.event == "finish")
            return finished >= 30 and bool(ledger.running_at(found, time.time()))

        wait_for(warmed_up, 30, "30 jobs to finish with more running", detail=worker.log)

        down_at = time.time()
        cluster.stop(mode)
        time.sleep(down_seconds)  # the outage itself
        back_at = cluster.start()

        # Keep adding for a while after the restart, then let the queue drain.
        wait_for(
            lambda: sum(1 for t in load.snapshot().values() if t >= back_at) >= 40,
            30,
            "40 jobs added after the restart",
        )
        load.stop()
        added = load.snapshot()
        with fresh(cluster) as check:

            def drained() -> bool:
                worker.running()
                return not ledger.queued(check, schema, added)

            wait_for(drained, 60, "every added job to be done", detail=worker.log)
            found = ledger.events(check)
            result = ledger.tally(added, found, ledger.queued(check, schema, added))
            in_flight = ledger.running_at(found, down_at)
    finally:
        load.stop()
        worker.kill()
        client.close()

    context = (
        f"{ledger.summary(vars(result))}, in flight at the restart: {sorted(in_flight)}\n"
        f"{worker.log()}"
    )
    assert in_flight, "no job was running when the server went down: the test proved nothing"
    assert result.added >= 60, context
    assert result.lost == [], context
    assert result.still_queued == [], context
    # Exactly once, except a job that was running when the server went down.
    assert set(result.duplicated) <= in_flight, context
    assert all(count == 2 for count in result.duplicated.values()), context

    # The first job added after the restart started within 10 s of the server's return.
    first_after = min((t, job_id) for job_id, t in added.items() if t >= back_at)[1]
    first_start = min(e.at for e in found if e.job_id == first_after and e.event == "start")
    assert first_start - back_at < RESUME_WITHIN, context
    print(
        f"\n{mode}: {result.added} jobs, {len(in_flight)} in flight at the restart, "
        f"{result.duplicate_runs} run twice, first job after the restart started "
        f"{first_start - back_at:.2f} s after the server was back"
    )


def test_defer_works_again_within_seconds_of_a_long_outage(cluster: Cluster) -> None:
    """The app's pool must not sit out an exponential reconnect backoff after the
    database comes back: a web request's defer works again within seconds."""
    schema = f"pgw_outage_{secrets.token_hex(4)}"
    client = App(database_url=cluster.url, schema=schema, embedded=False, pool_timeout=1.0)
    with client:
        client.migrate()
        client.defer("ledger_job", {"seconds": 0})
        cluster.stop("immediate")
        failures = 0
        outage_ends = time.monotonic() + 20.0
        while time.monotonic() < outage_ends:  # defers fail (fast) all through it
            try:
                client.defer("ledger_job", {"seconds": 0})
            except Exception:
                failures += 1
            time.sleep(0.5)
        assert failures > 5
        back_at = cluster.start()
        added = None
        while added is None and time.time() - back_at < 15.0:
            try:
                added = client.defer("ledger_job", {"seconds": 0})
            except Exception:
                time.sleep(0.1)
        assert added is not None, "no defer worked within 15 s of the server coming back"
        assert time.time() - back_at < 5.0
