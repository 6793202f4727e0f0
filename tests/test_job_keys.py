"""Job keys under contention: the keyed-add race (graphile/worker#580) is closed.

Without the fix (add_jobs minus its advisory and row locks) the test below fails with
about a hundred JobNotCreatedError: requests that add_job silently dropped upstream.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg

from pgworker import App, Job

Conn = psycopg.Connection[tuple[Any, ...]]
KEYS = [f"key-{i}" for i in range(20)]


def test_concurrent_keyed_defers_while_workers_fetch_lose_nothing(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(concurrency=4, max_pool_size=16)
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    @app.task("keyed")
    def keyed(payload: dict[str, Any]) -> None:
        with lock:
            runs[payload["key"]] += 1

    returned: list[Job] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        for _ in range(10):
            for key in KEYS:
                try:
                    job = keyed.defer({"key": key}, job_key=key)
                except BaseException as exc:
                    errors.append(exc)
                else:
                    with lock:
                        returned.append(job)

    with app:
        app.migrate()
        workers = [app.start(), app.start()]
        try:
            threads = [threading.Thread(target=hammer) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            deadline = time.monotonic() + 20
            while db.execute(f'select count(*) from "{schema}".jobs').fetchone() != (0,):
                assert time.monotonic() < deadline, "keyed jobs were left behind"
                time.sleep(0.05)
        finally:
            for handle in workers:
                handle.stop(timeout=5)
    assert errors == []
    assert len(returned) == 8 * 10 * len(KEYS)
    assert all(job.key in KEYS for job in returned)
    # Every key ran at least once, and never more often than it was requested.
    assert set(runs) == set(KEYS)
    assert all(1 <= count <= 80 for count in runs.values())
