"""Lost connections: a claim whose answer is lost (the claim commits, the connection dies
before its rows reach the worker), how soon worker threads reconnect, and defers during
an outage. A loopback TCP proxy between the worker and PostgreSQL forwards the
claim statement, then swallows the server's answer and cuts the connection. The worker
must give back what it locked without knowing, and run those jobs soon."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from processes import wait_for
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgworker import App, DatabaseUnavailableError

Conn = psycopg.Connection[tuple[Any, ...]]

#: Text that only the claim statement holds (sent in full until psycopg prepares it).
CLAIM_MARKER = b"locked_queues"


class LosingProxy:
    """Forwards connections to PostgreSQL; the first connection that sends the claim
    statement gets no answer to it, and is cut half a second later (once the server has
    committed). ``go_down()`` stops it: every connection cut, new ones refused."""

    def __init__(self, target: tuple[int, str | tuple[str, int]]) -> None:
        self.family, self.address = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        # shutdown() stops a listening socket at once (close() alone waits for the
        # blocked accept to return, and goes on accepting meanwhile).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def go_down(self) -> None:
        self.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(self.family, socket.SOCK_STREAM)
            server.connect(self.address)
            self._sockets += [client, server]
            swallow = threading.Event()
            threading.Thread(target=self._up, args=(client, server, swallow), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, swallow), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        with client, server:
            while data := _recv(client):
                server.sendall(data)
                if CLAIM_MARKER in data and not self.cut.is_set():
                    self.cut.set()
                    swallow.set()
                    time.sleep(0.5)  # the claim commits; its rows go nowhere
                    client.shutdown(socket.SHUT_RDWR)
                    return

    def _down(self, server: socket.socket, client: socket.socket, swallow: threading.Event) -> None:
        while (data := _recv(server)) and not swallow.is_set():
            try:
                client.sendall(data)
            except OSError:
                return


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def server_address(database_url: str) -> tuple[int, str | tuple[str, int]]:
    """Where the test database listens: a TCP address or a unix socket path."""
    params = conninfo_to_dict(database_url)
    host = str(params.get("host") or "127.0.0.1")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


@pytest.fixture
def proxy(database_url: str) -> Iterator[LosingProxy]:
    losing = LosingProxy(server_address(database_url))
    yield losing
    losing.close()


def test_jobs_a_lost_claim_locked_still_run(
    make_app: Callable[..., App], proxy: LosingProxy, database_url: str, db: Conn, schema: str
) -> None:
    through_proxy = make_conninfo(
        database_url, host="127.0.0.1", hostaddr="127.0.0.1", port=proxy.port, sslmode="disable"
    )
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
    through_proxy = make_conninfo(
        database_url, host="127.0.0.1", hostaddr="127.0.0.1", port=proxy.port, sslmode="disable"
    )
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
