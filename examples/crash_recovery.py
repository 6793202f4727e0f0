"""A worker is killed (SIGKILL) in the middle of a job; another worker runs it again.

Run it: ``python examples/crash_recovery.py`` (uses DATABASE_URL, or starts an embedded
PostgreSQL). It starts ``pgworker run examples.crash_recovery:app`` as a child process,
kills it once the job has started, and runs a worker here that takes the job back as soon
as the dead worker's heartbeat is stale. The settings are short so the demo takes
seconds; the defaults (``Recovery()``) bring a job back within a minute.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from pgworker import App, JobContext, Recovery

#: Heartbeats every 0.5 s, dead after 2 s of silence, sweeps every 0.5 s.
DEMO_RECOVERY = Recovery(heartbeat_interval=0.5, stale_after=2.0, sweep_interval=0.5)

app = App(recovery=DEMO_RECOVERY, poll_interval=0.5)


class Report(msgspec.Struct):
    name: str


@app.task("build_report")
def build_report(report: Report, ctx: JobContext) -> None:
    print(f"[pid {os.getpid()}] building {report.name} (last error: {ctx.job.last_error})")
    time.sleep(float(os.environ.get("REPORT_SECONDS", "1")))
    print(f"[pid {os.getpid()}] {report.name} done", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(__file__).resolve().parent.parent
    with app:  # DATABASE_URL, PG*, or an embedded development server
        url = app.conninfo
        app.migrate()
        job = build_report.defer(Report(name="quarterly"))
        command = [sys.executable, "-m", "pgworker.cli", "--log-level", "warning", "run"]
        child = subprocess.Popen(
            [*command, "examples.crash_recovery:app"],
            cwd=root,
            env={**os.environ, "DATABASE_URL": url, "REPORT_SECONDS": "60"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        print(child.stdout.readline(), end="", flush=True)  # "building quarterly ..."
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.monotonic()
        print(f"killed the worker running job #{job.id}; starting another one here")
        handle = app.start()
        try:
            while app.admin.job(job.id) is not None and time.monotonic() - killed < 30:
                time.sleep(0.1)
        finally:
            handle.stop()
        print(f"job #{job.id} ran again {time.monotonic() - killed:.1f} s after the kill")


if __name__ == "__main__":
    main()
