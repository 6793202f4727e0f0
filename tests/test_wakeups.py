"""Threads that wait for work are woken when the worker stops, instead of each waiting
out its poll interval; and an idle watch thread doesn't spin."""

from __future__ import annotations

import threading
import time

import pytest

from pgworker import App, completer, runner, watch
from pgworker.inflight import InFlight
from pgworker.running import RunningJob
from pgworker.store import Store
from pgworker.watch import Watch

#: Far longer than any stop may take: a thread that waits out its poll shows.
LONG_POLL = 30.0


def test_a_worker_stops_without_waiting_out_its_threads_polls(
    opened: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "IDLE_CHECK", LONG_POLL)
    monkeypatch.setattr(completer, "IDLE_CHECK", LONG_POLL)
    monkeypatch.setattr(watch, "TICK", LONG_POLL)
    ran: list[int] = []

    @opened.task("record")
    def record(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    for n in range(3):
        record.defer({"n": n})
    opened.concurrency = 4
    before = set(threading.enumerate())
    started = time.monotonic()
    opened.run_once()
    assert sorted(ran) == [0, 1, 2]
    # Without wake-ups the shutdown joins each idle thread for 5 s (its join timeout).
    assert time.monotonic() - started < 3.0
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("pgworker-")]


class CountingInFlight(InFlight):
    """Counts how often the watch thread looks at the running jobs."""

    looks = 0

    @property
    def running(self) -> list[RunningJob]:
        self.looks += 1
        return []


def test_an_idle_watch_woken_by_a_cancel_request_does_not_spin(
    opened: App, database_url: str
) -> None:
    inflight = CountingInFlight(1)
    store: Store = opened.store
    watcher = Watch(
        store,
        database_url,
        inflight,
        poll_interval=1.0,
        hard_limit=1.0,
        on_overrun=lambda job: None,
    )
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    watcher.wake()  # a cancel request, with no job of ours running
    time.sleep(0.5)
    looks = inflight.looks
    stop.set()
    thread.join(timeout=2.0)
    assert not thread.is_alive()
    assert looks < 20  # a tick every 0.1 s, not a busy loop
