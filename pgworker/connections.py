"""Connections a worker keeps outside its pool, and the backoff its reconnect loops share."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg

from .roundtrip import close_at_once

#: Bounds of the jittered backoff after a database error in a worker thread: capped at a
#: few seconds, so that a worker is back within seconds of a long outage's end.
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
#: Options for connections the worker opens itself: give up connecting after 10 s, and
#: notice a dead peer within about a minute instead of the kernel's quarter of an hour.
CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def backoff_delay(attempt: int) -> float:
    """Jittered exponential backoff: at once, then 0.2 s doubling up to 5 s.

    The first retry is immediate because the usual cause is one connection that died
    while idle, and it has already been dropped.
    """
    if attempt == 0:
        return 0.0
    ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


#: psycopg's own default: a statement run this many times on a connection is prepared.
DEFAULT_PREPARE_THRESHOLD = 5


class Conninfo(str):
    """A connection string that also says whether psycopg may prepare statements on its
    connections: ``prepare_threshold`` None never prepares, for PgBouncer in transaction
    mode (a statement prepared on one server connection is unknown on the next). A
    ``str``, so every component handed a conninfo passes the setting on unchanged."""

    prepare_threshold: int | None

    def __new__(
        cls, value: str, *, prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
    ) -> Conninfo:
        """``value`` with its ``prepare_threshold``."""
        conninfo = super().__new__(cls, value)
        conninfo.prepare_threshold = prepare_threshold
        return conninfo


def prepare_threshold_of(conninfo: str) -> int | None:
    """The prepare threshold for connections to ``conninfo`` (psycopg's default unless
    it is a Conninfo that says otherwise)."""
    if isinstance(conninfo, Conninfo):
        return conninfo.prepare_threshold
    return DEFAULT_PREPARE_THRESHOLD


def connect(conninfo: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection outside the app's pool. ``conninfo`` must be complete
    (a caller-owned pool's ``kwargs`` are not reused)."""
    return psycopg.connect(
        conninfo, prepare_threshold=prepare_threshold_of(conninfo), **CONNECT_OPTIONS
    )


class OwnConnection:
    """A connection kept by one worker thread for its hot-path statements (cheaper than
    a pool round trip each time), reopened on next use after it breaks. Another thread
    may call in too (a sweep run by hand beside the sweeper's own): the lock makes them
    share one connection instead of each opening one and leaking the other."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection, reconnecting first if the last one broke or was closed."""
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    conn.close()
                self._conn = conn = connect(self.conninfo)
            return conn

    def close(self) -> None:
        """Close the connection, if open."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def discard(self) -> None:
        """Drop the connection without waiting on the network (a statement on it went
        unanswered); the next ``get()`` opens a new one."""
        with self._lock:
            if self._conn is not None:
                close_at_once(self._conn)
                self._conn = None
