"""What `pgworker run` loads and does at start-up: no more than it needs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgworker import App, RawJob, connections, giveback
from pgworker.store import Store
from pgworker.store_recovery import sweep_lock_params


def test_a_worker_without_async_tasks_never_loads_the_event_loop_machinery() -> None:
    code = (
        "import sys, pgworker.cli, pgworker.worker; "
        "print(sorted(m for m in sys.modules if m in ('pgworker.aio', 'pgworker.async_jobs')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_run_once_worker_opens_one_connection_of_its_own_to_claim(
    opened: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Registering, the run-once sweep and reset and the claims share the fetcher's
    # connection; the heartbeat, completer and watch open theirs only when they need one.
    # The one other connection leaves the registry at the end.
    opened_by: list[str] = []
    real_connect = connections.connect

    def counting_connect(conninfo: str) -> Any:
        opened_by.append(threading.current_thread().name)
        return real_connect(conninfo)

    monkeypatch.setattr(connections, "connect", counting_connect)
    monkeypatch.setattr(giveback, "connect", counting_connect)

    @opened.task("record")
    def record(payload: dict[str, int]) -> None:
        """Never runs: the queue is empty."""

    opened.run_once()
    assert opened_by == [threading.current_thread().name] * 2


FREEZE_APP = """
import gc
import os

from pgworker import App

app = App()


@app.task("report")
def report(payload: object) -> None:
    with open(os.environ["FREEZE_REPORT"], "w", encoding="ascii") as out:
        out.write(str(gc.get_freeze_count()))
"""


def test_pgworker_run_freezes_what_start_up_loaded(
    tmp_path: Path, database_url: str, schema: str
) -> None:
    # Modules, the app and its tasks live as long as the process: frozen, the cyclic
    # collector never walks them again, while jobs run or at exit.
    (tmp_path / "freeze_app.py").write_text(FREEZE_APP, encoding="utf-8")
    with App(database_url=database_url, schema=schema) as app:
        app.migrate()
        app.defer_raw([RawJob("report")])
    report = tmp_path / "frozen.txt"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FREEZE_REPORT": str(report)}
    command = [sys.executable, "-m", "pgworker.cli", "run", "freeze_app:app", "--once"]
    subprocess.run(
        [*command, "--database-url", database_url, "--schema", schema],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert int(report.read_text(encoding="ascii")) > 10_000


def test_only_a_worker_given_its_id_looks_for_a_predecessor_s_locks(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looking scans the jobs table twice (locked_by has no index): a 1,000,000-job table
    # made that ~150 ms of every start. An id made up at start has no predecessor.
    releases: list[bool] = []
    real_register = Store.register_worker

    def spying_register(self: Store, *args: Any, **kwargs: Any) -> int | None:
        releases.append(kwargs["release"])
        return real_register(self, *args, **kwargs)

    monkeypatch.setattr(Store, "register_worker", spying_register)
    for app in (make_app(), make_app(worker_id="given-1")):

        @app.task("idle")
        def idle(payload: object) -> None:
            """Never runs: the queue is empty."""

        with app:
            app.migrate()
            app.run_once()
    assert releases == [False, True]


def test_the_sweep_never_compiles_its_statements_with_jit(opened: App, database_url: str) -> None:
    # The planner costs the sweep as scans of the whole jobs table; with JIT on, a
    # 20,000-job table made each run-once worker's sweep take 30-160 ms to compile on its
    # fresh connection. Here JIT would compile any statement (jit_above_cost = 0).
    with psycopg.connect(database_url, autocommit=True) as conn:
        if conn.execute("select pg_jit_available()").fetchone() != (True,):
            pytest.skip("this PostgreSQL has no JIT to turn off")
        conn.execute("set jit_above_cost = 0")
        queries = opened.store.queries
        params = {"threshold": 45.0, "foreign_threshold": 300.0, "self_id": None}
        explain = b"explain (format json) " + queries["lock_dead_workers"]
        with conn.transaction():
            lock = sweep_lock_params()
            assert conn.execute(queries["try_sweep_lock"], lock).fetchone()[0] is True
            row = conn.execute(explain, params).fetchone()
    assert row is not None
    assert "JIT" not in row[0][0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="root only")
def test_embedded_servers_start_one_at_a_time_as_root() -> None:
    # As root the wheel creates its system user outside any lock of its own: two
    # processes starting servers at once must not both get to it.
    from pgworker.embedded import one_start_at_a_time

    code = (
        "import time; from pgworker.embedded import one_start_at_a_time\n"
        "with one_start_at_a_time(): print(time.time())"
    )
    with one_start_at_a_time():
        other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert other.poll() is None  # still waiting for the lock
        released = time.time()
    out, _ = other.communicate(timeout=30)
    assert float(out) >= released
