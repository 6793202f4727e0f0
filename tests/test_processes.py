"""``pgworker run --processes N``: the supervisor drains the benchmark's jobs with each
run once, replaces a killed child, recycles children after a number of jobs or above a
memory size without losing a job, backs off a child that crashes at start, and stops
every child gracefully on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import wait_for
from supervised import (
    Supervised,
    alive,
    create_ledger,
    drop_ledger,
    ledger_rows,
    remaining_jobs,
    runs_per_job,
    start_supervisor,
)

from benchmarks.phases import defer_many
from pgworker import App
from pgworker.supervisor import BACKOFF_MAX, BACKOFF_MIN, describe_exit, restart_delay

#: Bounds of the waits: a queue drains within DRAIN_TIMEOUT, a supervisor and its
#: children exit within STOP_TIMEOUT of SIGTERM.
DRAIN_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


@pytest.fixture
def ledger(database_url: str, schema: str) -> Iterator[str]:
    name = f"{schema}_ledger"
    create_ledger(database_url, name)
    yield name
    drop_ledger(database_url, name)


@pytest.fixture
def supervise(
    database_url: str, schema: str, ledger: str, tmp_path: Path
) -> Iterator[Callable[..., Supervised]]:
    """Start supervisors on this test's schema and ledger; all killed afterwards."""
    started: list[Supervised] = []

    def start(*args: str, **env: str) -> Supervised:
        log = tmp_path / f"supervisor-{len(started)}.log"
        supervised = start_supervisor(database_url, schema, ledger, log, *args, env=env)
        started.append(supervised)
        return supervised

    yield start
    for supervised in started:
        supervised.kill()


def stop_gracefully(supervised: Supervised) -> None:
    """SIGTERM the supervisor: it exits 0 and no child it started is left."""
    supervised.proc.send_signal(signal.SIGTERM)
    assert supervised.wait_exit(STOP_TIMEOUT) == 0, supervised.log()
    left = [pid for pid in supervised.started_pids() if alive(pid)]
    assert left == [], f"children left running: {left}\n{supervised.log()}"
    assert "every worker process has stopped" in supervised.text()


def wait_drained(
    supervised: Supervised, database_url: str, schema: str, ledger: str, jobs: int, what: str
) -> list[tuple[Any, ...]]:
    """Wait until the queue is empty and the ledger holds ``jobs`` runs; return its rows."""
    wait_for(
        lambda: (
            remaining_jobs(database_url, schema) == 0
            and len(ledger_rows(database_url, ledger)) >= jobs
        ),
        DRAIN_TIMEOUT,
        what,
        detail=supervised.log,
        interval=0.2,
    )
    return ledger_rows(database_url, ledger)


def migrated(make_app: Callable[..., App]) -> App:
    app = make_app().open()
    app.migrate()
    return app


# -- pure -----------------------------------------------------------------------------


def test_restart_delay_grows_to_a_cap_and_is_zero_without_a_crash() -> None:
    assert restart_delay(0) == 0.0
    delays = [restart_delay(n) for n in range(1, 12)]
    assert BACKOFF_MIN * 0.75 <= delays[0] <= BACKOFF_MIN
    assert all(d <= BACKOFF_MAX for d in delays)
    assert delays[-1] >= BACKOFF_MAX * 0.75
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(1) == "code 1"


# -- end to end -----------------------------------------------------------------------


def test_four_processes_drain_the_benchmark_jobs_each_once_and_stop_on_sigterm(
    supervise: Callable[..., Supervised],
    make_app: Callable[..., App],
    database_url: str,
    schema: str,
    ledger: str,
) -> None:
    jobs = 3000
    migrated(make_app)
    supervised = supervise("--processes", "4", "-j", "4", "--prefetch", "20")
    pids = supervised.wait_children(4)
    for pid in pids:  # the URL (and its password) reaches them by environment, not argv
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "pgworker.cli" in cmdline
        assert database_url not in cmdline
    defer_many(database_url, schema, jobs, 500)
    rows = wait_drained(supervised, database_url, schema, ledger, jobs, "the queue to drain")
    runs = runs_per_job(rows)
    assert len(runs) == jobs
    assert set(runs.values()) == {1}, "a job ran more than once"
    ran_in = {row[1] for row in rows}
    assert ran_in <= set(pids)
    assert len(ran_in) >= 2, "the jobs were not spread over the processes"
    assert len({row[2] for row in rows}) == len(ran_in), "one worker id per process"
    stop_gracefully(supervised)


def test_a_killed_child_is_replaced_and_its_job_recovered(
    supervise: Callable[..., Supervised],
    make_app: Callable[..., App],
    database_url: str,
    schema: str,
    ledger: str,
) -> None:
    app = migrated(make_app)
    supervised = supervise("--processes", "2", "-j", "2", PROCESSES_RECOVERY="0.3,1.5,0.3")
    first = supervised.wait_children(2)
    naps = [app.defer("nap", {"seconds": 0.5}).id for _ in range(8)]

    def a_started_job() -> tuple[int, int] | None:
        rows = ledger_rows(database_url, ledger, "started")
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    job_id, victim = wait_for(a_started_job, 30, "a nap to start", detail=supervised.log)
    supervised_pids = set(first)
    assert victim in supervised_pids
    started_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    pids = supervised.wait_children(3)
    assert pids[2] not in supervised_pids, "a new process replaced the killed one"
    assert time.monotonic() - started_at < 10
    assert re.search(
        rf"Worker process {victim} \(slot \d\) exited with signal SIGKILL", supervised.text()
    )
    done = wait_drained(supervised, database_url, schema, ledger, len(naps), "every nap to be done")
    assert runs_per_job(done) == dict.fromkeys(naps, 1)
    killed_job_done_by = {int(row[1]) for row in done if int(row[0]) == job_id}
    assert victim not in killed_job_done_by, "the killed child's job was recovered elsewhere"
    stop_gracefully(supervised)


def test_children_are_recycled_after_max_jobs_without_losing_a_job(
    supervise: Callable[..., Supervised],
    make_app: Callable[..., App],
    database_url: str,
    schema: str,
    ledger: str,
) -> None:
    jobs, limit, concurrency, prefetch = 400, 50, 2, 5
    migrated(make_app)
    supervised = supervise(
        "--processes", "2", "-j", str(concurrency), "--prefetch", str(prefetch),
        "--max-jobs-per-child", str(limit),
    )  # fmt: skip
    supervised.wait_children(2)
    defer_many(database_url, schema, jobs, 100)
    rows = wait_drained(supervised, database_url, schema, ledger, jobs, "the queue to drain")
    runs = runs_per_job(rows)
    assert len(runs) == jobs
    assert set(runs.values()) == {1}
    per_process = runs_per_job([(row[1],) for row in rows])
    # Past its limit a child starts no job it has not yet been handed, and gives back the
    # prefetched ones it has not started.
    assert max(per_process.values()) <= limit + concurrency + prefetch, per_process
    assert len(per_process) >= jobs // (limit + concurrency + prefetch)
    log = supervised.text()
    assert "Recycling this worker (50 job(s) run, the limit is 50)" in log
    assert "stopped by itself (recycled); starting another" in log
    assert "Traceback" not in log
    stop_gracefully(supervised)


def test_a_child_is_recycled_above_its_memory_limit_without_losing_a_job(
    supervise: Callable[..., Supervised],
    make_app: Callable[..., App],
    database_url: str,
    schema: str,
    ledger: str,
) -> None:
    app = migrated(make_app)
    supervised = supervise("--processes", "1", "-j", "1", "--max-memory-per-child", "150")
    supervised.wait_children(1)
    ids = [app.defer("noop", {"n": n}).id for n in range(10)]
    ids.append(app.defer("hog", {"megabytes": 200}, priority=-1).id)
    ids += [app.defer("noop", {"n": n}).id for n in range(10, 20)]
    rows = wait_drained(supervised, database_url, schema, ledger, len(ids), "the queue to drain")
    assert runs_per_job(rows) == dict.fromkeys(ids, 1)
    pids = supervised.wait_children(2)
    hog_pid = next(int(row[1]) for row in rows if int(row[0]) == ids[10])
    assert hog_pid == pids[0]
    assert not alive(hog_pid)
    assert re.search(
        r"Recycling this worker \(resident memory \d+ MiB, the limit", supervised.text()
    )
    stop_gracefully(supervised)


def test_a_child_that_crashes_at_start_is_restarted_with_backoff(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    # Nothing listens on port 1: every child exits with 1 at once.
    supervised = supervise(
        "--processes", "1", "--database-url", "postgresql://postgres@127.0.0.1:1/none"
    )
    started = time.monotonic()
    supervised.wait_children(4, timeout=30)
    elapsed = time.monotonic() - started
    # Three restarts waited at least 0.75 * (0.25 + 0.5 + 1.0) s: no spinning.
    assert elapsed >= 0.75 * (0.25 + 0.5 + 1.0), elapsed
    assert len(re.findall(r"exited with code 1 .* restarting in", supervised.text())) >= 3
    supervised.proc.send_signal(signal.SIGTERM)
    assert supervised.wait_exit(STOP_TIMEOUT) == 0, supervised.log()
