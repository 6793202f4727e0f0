"""What `pgworker run` loads at start-up: no more than it needs."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest

from pgworker import App, connections, giveback


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
