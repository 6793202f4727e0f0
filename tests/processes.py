"""Worker subprocesses for the fault tests: ``pgworker run MODULE:app`` with a log file
and a marker directory, and ``wait_for``, the bounded wait every such test uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent


def _pgworker_script() -> str:
    script = Path(sys.executable).with_name("pgworker")
    return str(script) if script.exists() else "pgworker"


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    detail: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}{extra}")
        time.sleep(interval)


# -- subprocess workers ---------------------------------------------------------------


class WorkerProcess:
    """A ``pgworker run fault_app:app`` subprocess, its log file and its marker files."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, markers: Path) -> None:
        self.proc = proc
        self.log_path = log
        self.markers = markers

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- worker log (pid {self.proc.pid}) ---\n{text[-6000:]}"

    def running(self) -> bool:
        """True while the process lives; fails the test (with its log) if it died."""
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited early with code {self.proc.returncode}\n{self.log()}")
        return True

    def worker_id(self, timeout: float = 15.0) -> str:
        """The lock-owner id, from the worker's 'started' log line."""

        def started() -> str | None:
            self.running()
            found = re.search(r"Worker (pgworker-\S+) started", self.log_path.read_text())
            return found.group(1) if found else None

        return wait_for(started, timeout, "the worker to start", detail=self.log)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit within {timeout:.1f} s\n{self.log()}")

    def marker(self, job_id: int, attempt: int, event: str) -> str | None:
        """The worker id in a marker file, or None if the task has not written it."""
        path = self.markers / f"{job_id}-{attempt}-{event}"
        return path.read_text() if path.exists() else None

    def events(self, job_id: int, event: str) -> list[str]:
        """The worker ids of every ``event`` of ``job_id`` in the events log, in order (a
        job recovered with its attempt refunded overwrites its marker, not this)."""
        log = self.markers / "events.log"
        if not log.exists():
            return []
        found = []
        for line in log.read_text().splitlines():
            marker, worker_id, _ = line.split(" ")
            job, _, rest = marker.partition("-")
            if job == str(job_id) and rest.split("-", 1)[1] == event:
                found.append(worker_id)
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def tests_environment(**extra: str) -> dict[str, str]:
    """This process's environment with the tests directory on PYTHONPATH (where the
    subprocess apps live), plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def spawn_logged(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` from the tests directory in a session of its own (so that it
    can be signalled as a group), its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=TESTS_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def worker_spawner(
    database_url: str, schema: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pgworker run fault_app:app`` subprocesses (another app with
    ``target=``); every one is killed afterwards. The body of the ``spawn_worker``
    fixture."""
    markers = tmp_path / "markers"
    markers.mkdir()
    started: list[WorkerProcess] = []

    def spawn(
        target: str = "fault_app:app", *, extra_args: tuple[str, ...] = (), **env: str
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        environ = tests_environment(FAULT_MARKER_DIR=str(markers), **env)
        command = [
            _pgworker_script(),
            "run",
            target,
            "--database-url",
            database_url,
            "--schema",
            schema,
            "--poll-interval",
            "0.2",
            *extra_args,
        ]
        worker = WorkerProcess(spawn_logged(command, environ, log), log, markers)
        started.append(worker)
        return worker

    try:
        yield spawn
    finally:
        for worker in started:
            worker.kill()
