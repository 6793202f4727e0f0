"""A plugin that counts what the worker does and prints the counts when it stops."""

from __future__ import annotations

import threading
from typing import Any

from pgworker import Job, Plugin


class MetricsPlugin(Plugin):
    """Counts started, completed and failed jobs."""

    def __init__(self) -> None:
        self.started = self.completed = self.failed = 0
        self._lock = threading.Lock()

    def on_worker_start(self, worker: Any) -> None:
        print(f"Metrics: worker {worker.worker_id} started\n", end="", flush=True)

    def on_job_started(self, job: Job) -> None:
        with self._lock:
            self.started += 1

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        with self._lock:
            self.completed += 1

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        with self._lock:
            self.failed += 1

    def on_worker_shutdown(self, worker: Any) -> None:
        print(
            f"Metrics: started={self.started} completed={self.completed} failed={self.failed}",
            flush=True,
        )
