"""Lost connections: a claim whose answer is lost (the claim commits, the connection dies
before its rows reach the worker), how soon worker threads reconnect, and defers during
an outage. A loopback TCP proxy between the worker and PostgreSQL forwards the
claim statement, then swallows the server's answer and cuts the connection. The worker
must give back what it locked without knowing, and run those jobs soon."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from processes import wait_for
from proxy import Link, Proxy, server_address

from pgworker import App, DatabaseUnavailableError

Conn = psycopg.Connection[tuple[Any, ...]]

#: Text that only the claim statement holds (sent in full until psycopg prepares it).
CLAIM_MARKER = b"locked_queues"


class LosingProxy(Proxy):
    """Forwards connections to PostgreSQL; the first connection that sends the claim
    statement gets no answer to it, and is cut half a second later (once the server has
    committed)."""

    def __init__(self, target: tuple[int, str | tuple[str, int]]) -> None:
        self.cut = threading.Event()
        super().__init__(target)

    def client_sent(self, link: Link, data: bytes) -> bool:
        if CLAIM_MARKER in data and not self.cut.is_set():
            self.cut.set()
            link.swallow.set()
            time.sleep(0.5)  # the claim commits; its rows go nowhere
            link.cut()
            return False
        return True


@pytest.fixture
def proxy(database_url: str) -> Iterator[LosingProxy]:
    losing = LosingProxy(server_address(database_url))
    yield losing
    losing.close()


def test_jobs_a_lost_claim_locked_still_run(
    make_app: Callable[..., App], proxy: LosingProxy, database_url: str, db: Conn, schema: str
) -> None:
    through_proxy = proxy.conninfo(database_url)
    client = make_app().open()
    client.migrate()
    app = make_app(database_url=through_proxy, concurrency=4)
    ran: list[int] = []

    @app.task("work")
    def work(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    for n in range(4):
        client.defer("work", {"n": n}, queue="serial" if n == 3 else None)
    with app:
        handle = app.start()
        try:
            assert proxy.cut.wait(10), "the worker never claimed"
            wait_for(lambda: len(ran) == 4, 10, "the jobs the lost claim had locked")
        finally:
            handle.stop()
    assert sorted(ran) == [0, 1, 2, 3]
    assert db.execute(f'select count(*) from "{schema}"._private_jobs').fetchone() == (0,)
    locked = db.execute(
        f'select count(*) from "{schema}"._private_job_queues where locked_by is not null'
    ).fetchone()
    assert locked == (0,)
    client.close()


def test_reconnect_backoff_stays_within_a_few_seconds() -> None:
    """After a long outage a worker thread tries again within 5 s (jittered), not 30."""
    from pgworker.connections import BACKOFF_MAX, backoff_delay

    assert backoff_delay(0) == 0.0  # a connection that died while idle: at once
    delays = [backoff_delay(attempt) for attempt in range(1, 200)]
    assert max(delays) <= BACKOFF_MAX == 5.0
    assert min(delays[10:]) >= BACKOFF_MAX / 2  # jitter keeps it above half the cap


def test_defer_during_an_outage_fails_fast(
    make_app: Callable[..., App], proxy: LosingProxy, database_url: str
) -> None:
    """A web request that defers while the database is unreachable gets a clear error
    within the pool timeout, instead of hanging."""
    through_proxy = proxy.conninfo(database_url)
    make_app().open().migrate()
    app = make_app(database_url=through_proxy, pool_timeout=1.0)
    with app:
        app.defer("work", {"n": 1})
        proxy.go_down()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailableError, match="the database is unreachable"):
                app.defer("work", {"n": 2})
            assert time.monotonic() - started < 2.0
