"""``pgworker run processes_app:app --processes N`` as a subprocess for the tests, and
the ledger its tasks write (see tests/processes_app.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from processes import spawn_logged, tests_environment, wait_for
from psycopg import sql

TESTS_DIR = Path(__file__).resolve().parent
APP_TARGET = "processes_app:app"
_STARTED = re.compile(r"Started worker process (\d+) \(slot (\d+)\)")


class Supervised:
    """A supervisor process, its log, and the pids of the children it started."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log_path = log

    def text(self) -> str:
        """The whole log of the supervisor and its children."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log(self) -> str:
        """The end of the log, for a failure's message."""
        return f"--- supervisor log (pid {self.proc.pid}) ---\n{self.text()[-8000:]}"

    def started_pids(self) -> list[int]:
        """Every child pid the supervisor started, in order."""
        return [int(m.group(1)) for m in _STARTED.finditer(self.text())]

    def wait_children(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until ``count`` children were started; their pids."""

        def enough() -> list[int] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"the supervisor exited with {self.proc.returncode}\n{self.log()}")
            pids = self.started_pids()
            return pids if len(pids) >= count else None

        return wait_for(enough, timeout, f"{count} worker processes", detail=self.log)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit within {timeout:.1f} s\n{self.log()}")

    def kill(self) -> None:
        """Kill the supervisor and every child it started (cleanup after a failure)."""
        for pid in self.started_pids():
            if alive(pid):
                os.kill(pid, 9)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_supervisor(
    database_url: str,
    schema: str,
    ledger: str,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> Supervised:
    """``pgworker run processes_app:app --processes ...`` (``args``) on this schema."""
    environ = tests_environment(PROCESSES_LEDGER=ledger, **(env or {}))
    command = [
        sys.executable,
        "-m",
        "pgworker.cli",
        "run",
        APP_TARGET,
        "--database-url",
        database_url,
        "--schema",
        schema,
        *args,
    ]
    return Supervised(spawn_logged(command, environ, log), log)


def create_ledger(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {} (job_id bigint not null, event text not null, "
                "pid int not null, worker_id text not null)"
            ).format(sql.Identifier(name))
        )


def drop_ledger(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))


def ledger_rows(database_url: str, name: str, event: str = "done") -> list[tuple[Any, ...]]:
    """(job_id, pid, worker_id) of every ``event`` row."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        query = sql.SQL("select job_id, pid, worker_id from {} where event = %s").format(
            sql.Identifier(name)
        )
        return conn.execute(query, (event,)).fetchall()


def remaining_jobs(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        query = sql.SQL("select count(*) from {}._private_jobs").format(sql.Identifier(schema))
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else -1


def runs_per_job(rows: list[tuple[Any, ...]]) -> Counter[int]:
    """How many times each job id appears in ``rows``."""
    return Counter(int(row[0]) for row in rows)
