"""A loopback TCP proxy between a worker and PostgreSQL, for the lost-connection tests: it
forwards every connection, and can cut them, refuse new ones, or go silent on chosen ones
(stop forwarding without closing, as a network that drops packets does)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable

from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: What the proxy looks for in the statements a client sends: the LISTEN statement.
LISTEN_MARKER = b'LISTEN "jobs:insert"'


class Link:
    """One proxied connection: the client's socket, the server's, and what the proxy
    has seen and decided about it."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        #: Markers (of the proxy's ``markers``) this client has sent so far.
        self.seen: set[bytes] = set()
        #: Silent: nothing more is forwarded either way; both sockets stay open.
        self.frozen = threading.Event()
        #: The server's answers are dropped (the client's statements still go through).
        self.swallow = threading.Event()

    def cut(self) -> None:
        """Close the client's side, as a network that resets the connection does."""
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)


class Proxy:
    """Forwards loopback connections on ``port`` to ``target`` (a TCP address or a unix
    socket path), noting which ``markers`` each client sends. Subclasses may act on
    every chunk a client sends in ``client_sent``."""

    def __init__(
        self, target: tuple[int, str | tuple[str, int]], markers: Iterable[bytes] = ()
    ) -> None:
        self.family, self.address = target
        self.markers = tuple(markers)
        self.links: list[Link] = []
        self._freezing: bytes | None = None
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self, database_url: str) -> str:
        """``database_url`` through this proxy."""
        return make_conninfo(
            database_url, host="127.0.0.1", hostaddr="127.0.0.1", port=self.port, sslmode="disable"
        )

    def freeze(self, marker: bytes, *, new_ones: bool = False) -> int:
        """Go silent on every connection that has sent ``marker``; with ``new_ones``, also
        on every connection that sends it from now on, until ``thaw()``. Returns how many
        connections went silent now."""
        with self._lock:
            if new_ones:
                self._freezing = marker
            frozen = [link for link in self.links if marker in link.seen]
        for link in frozen:
            link.frozen.set()
        return len(frozen)

    def links_with(self, marker: bytes) -> list[Link]:
        """The connections whose client has sent ``marker``."""
        with self._lock:
            return [link for link in self.links if marker in link.seen]

    def thaw(self) -> None:
        """Forward new connections normally again (silent ones stay silent)."""
        with self._lock:
            self._freezing = None

    def close(self) -> None:
        """Stop accepting connections (open ones go on)."""
        self._closing.set()
        # shutdown() stops a listening socket at once (close() alone waits for the
        # blocked accept to return, and goes on accepting meanwhile).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def go_down(self) -> None:
        """Every connection cut, new ones refused."""
        self.close()
        with self._lock:
            links = list(self.links)
        for link in links:
            for sock in (link.client, link.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def client_sent(self, link: Link, data: bytes) -> bool:
        """Called after ``data`` from ``link``'s client was forwarded; return False to
        stop forwarding that direction."""
        return True

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(self.family, socket.SOCK_STREAM)
            server.connect(self.address)
            link = Link(client, server)
            with self._lock:
                self.links.append(link)
            threading.Thread(target=self._up, args=(link,), daemon=True).start()
            threading.Thread(target=self._down, args=(link,), daemon=True).start()

    def _up(self, link: Link) -> None:
        with link.client, link.server:
            while data := _recv(link.client):
                self._note(link, data)
                if link.frozen.is_set():
                    continue  # read and dropped: the client's kernel sees no trouble
                try:
                    link.server.sendall(data)
                except OSError:  # the server's side was cut (go_down, close)
                    return
                if not self.client_sent(link, data):
                    return

    def _down(self, link: Link) -> None:
        while data := _recv(link.server):
            if link.frozen.is_set() or link.swallow.is_set():
                continue
            try:
                link.client.sendall(data)
            except OSError:
                return

    def _note(self, link: Link, data: bytes) -> None:
        for marker in self.markers:
            if marker in data:
                with self._lock:
                    link.seen.add(marker)
                    if marker == self._freezing:
                        link.frozen.set()


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
