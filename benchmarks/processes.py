"""Worker processes of either side: their command lines, start, stop and logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    APP_TARGET,
    EXIT_TIMEOUT,
    NODE_DIR,
    ROOT,
    STOP_TIMEOUT,
    BenchError,
    Options,
)


@dataclass(frozen=True)
class Side:
    """How to migrate a schema and start workers for one implementation."""

    name: str
    options: Options
    #: The local-queue configuration: pgworker --prefetch N, Node localQueue of size N with
    #: completeJobBatchDelay/failJobBatchDelay 0; N is ``--local-queue``, else the
    #: worker's concurrency.
    batching: bool = False

    def migrate(self, url: str, schema: str, logs: Path) -> None:
        if self.name == "pgworker":
            from pgworker import App

            with App(database_url=url, schema=schema) as app:
                app.migrate()
            return
        log = logs / f"node-migrate-{schema}.log"
        with open(log, "wb") as out:
            code = subprocess.run(
                ["node", "perf.js", "migrate", url, schema],
                cwd=NODE_DIR,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=EXIT_TIMEOUT,
                check=False,
            ).returncode
        if code != 0:
            raise BenchError(f"node perf.js migrate exited {code}:\n{tail(log)}")

    def command(
        self, url: str, schema: str, *, once: bool, concurrency: int, profiled: int | None = None
    ) -> tuple[list[str], Path]:
        """The argv of one worker process, and the directory to start it in; ``profiled``
        is the process's index when ``--pgworker-prefix`` applies ({i} in it becomes it)."""
        queue_size = self.options.local_queue_size(concurrency)
        if self.name == "pgworker":
            prefix = [] if profiled is None else self.options.pgworker_prefix
            argv = [
                *(part.replace("{i}", str(profiled)) for part in prefix),
                *pgworker_executable(),
                "--log-level",
                "warning" if self.options.quiet else "info",
                "run",
                APP_TARGET,
                *(["--once"] if once else []),
                "--concurrency",
                str(concurrency),
                *(["--prefetch", str(queue_size)] if self.batching else []),
                "--database-url",
                url,
                "--schema",
                schema,
            ]
            return argv, ROOT
        argv = ["node", "perf.js", "once" if once else "run", url, schema, str(concurrency)]
        if self.batching:
            argv.append(f"--batching={queue_size}")
        return argv, NODE_DIR

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)  # every process gets the URL explicitly
        if self.options.quiet:
            env["NO_LOG_SUCCESS"] = "1"
        else:
            env.pop("NO_LOG_SUCCESS", None)
        env.update(extra or {})
        return env


def pgworker_executable() -> list[str]:
    script = Path(sys.executable).parent / "pgworker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pgworker.cli"]


# -- processes --------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process and its log file."""

    process: subprocess.Popen[bytes]
    log: Path
    started: float
    #: Peak resident set size in kB (the kernel's ru_maxrss), once the process is reaped.
    peak_rss_kb: int | None = None

    @property
    def running(self) -> bool:
        """Whether it still runs; an exited process is reaped here, with its peak RSS
        (Popen.poll would reap it without)."""
        if self.process.returncode is not None:
            return False
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        if os.waitid(os.P_PID, self.process.pid, flags) is None:
            return True
        reap(self, 1.0)
        return False


def spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Worker:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches the workers via us
        )
    return Worker(process, log, time.perf_counter())


def stop(worker: Worker, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if worker.running:
        worker.process.send_signal(signal.SIGTERM)
    try:
        return reap(worker, timeout)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        return reap(worker, 10)


def reap(worker: Worker, timeout: float) -> int:
    """Wait (bounded) for the process to exit and record its peak RSS (wait4's
    ru_maxrss); returns its exit code, or raises subprocess.TimeoutExpired."""
    process = worker.process
    if process.returncode is not None:
        return process.returncode
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            worker.peak_rss_kb = usage.ru_maxrss
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(0.01)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def wait_for(condition: Callable[[], bool], timeout: float, worker: Worker, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not worker.running:
            raise BenchError(
                f"{what}: it exited ({worker.process.returncode}):\n{tail(worker.log)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{what} within {timeout:.0f} s:\n{tail(worker.log)}")
        time.sleep(0.02)
