"""A loopback TCP proxy in front of PostgreSQL that can silently stop forwarding on the
connections that sent LISTEN (no FIN, no RST: packets just stop, as behind a dead NAT)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from faults.cluster import free_port

#: Bytes that mark a connection as a LISTEN connection, seen in a client's query.
LISTEN_MARK = b'LISTEN "jobs:insert"'


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.listens = False
        self.frozen = threading.Event()

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``, a thread per direction.

    ``freeze_listeners()`` stops forwarding, both ways, on every connection that has sent
    LISTEN (the bytes are read and dropped, the sockets stay open); ``thaw()`` ends the
    fault by closing those connections, as a NAT that finally resets them would.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        #: time.time() of each connection's first LISTEN.
        self.listens_at: list[float] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            for source, sink, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(link, source, sink, outbound), daemon=True
                ).start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket, out: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if out and not link.listens and LISTEN_MARK in data:
                    link.listens = True
                    self.listens_at.append(time.time())
                if link.frozen.is_set():
                    continue  # swallowed: the peer never hears of it
                sink.sendall(data)
        except OSError:
            pass
        if not link.frozen.is_set():
            link.close()

    def freeze_listeners(self) -> int:
        """Go silent on every LISTEN connection; returns how many."""
        with self._lock:
            links = [link for link in self._links if link.listens and not link.frozen.is_set()]
        for link in links:
            link.frozen.set()
        return len(links)

    def thaw(self) -> None:
        """Close the frozen connections (the worker then sees the loss and reconnects)."""
        with self._lock:
            frozen = [link for link in self._links if link.frozen.is_set()]
            self._links = [link for link in self._links if not link.frozen.is_set()]
        for link in frozen:
            link.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed.set()
        self._server.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()
