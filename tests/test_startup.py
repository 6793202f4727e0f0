"""What `pgworker run` loads at start-up: no more than it needs."""

from __future__ import annotations

import subprocess
import sys


def test_a_worker_without_async_tasks_never_loads_the_event_loop_machinery() -> None:
    code = (
        "import sys, pgworker.cli, pgworker.worker; "
        "print(sorted(m for m in sys.modules if m in ('pgworker.aio', 'pgworker.async_jobs')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
