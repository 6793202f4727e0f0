"""Statements sent with a deadline, on connections whose network may go silent."""

from __future__ import annotations

import contextlib
import selectors
import time
from typing import Any

import psycopg
from psycopg import pq


def round_trip(
    conn: psycopg.Connection[Any], statement: bytes, timeout: float
) -> list[tuple[str, str]]:
    """Run ``statement`` (no parameters) on ``conn`` and wait at most ``timeout`` seconds
    for the server's answer, without ever blocking on the network.

    ``conn.execute()`` waits for as long as the socket stays open, and a network that
    drops packets without resetting the connection keeps it open until TCP keepalives give
    up (minutes). Raises TimeoutError when the answer is late (the connection must then be
    thrown away: the statement may still be in flight), psycopg errors as ``execute``
    would. Returns the notifications (channel, payload) that arrived meanwhile, which
    ``conn.notifies()`` would otherwise not see until more data arrives.
    """
    _exchange(conn, statement, timeout)
    return _notifications(conn)


def first_value(conn: psycopg.Connection[Any], statement: bytes, timeout: float) -> str | None:
    """Run ``statement`` (parameters inlined) on ``conn`` as ``round_trip`` does, within
    ``timeout`` seconds; return the first column of its first row as text (None for no
    row or NULL)."""
    for result in reversed(_exchange(conn, statement, timeout)):
        if result.status == pq.ExecStatus.TUPLES_OK:
            value = result.get_value(0, 0) if result.ntuples else None
            return None if value is None else value.decode(conn.info.encoding)
    return None


def _exchange(
    conn: psycopg.Connection[Any], statement: bytes, timeout: float
) -> list[pq.abc.PGresult]:
    """Send ``statement`` and read every result before the deadline (see round_trip)."""
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    # psycopg keeps libpq in non-blocking mode: sending never waits on the network.
    pgconn.send_query(statement)
    while pgconn.flush():
        _wait(pgconn.socket, selectors.EVENT_WRITE, deadline)
    error: psycopg.Error | None = None
    results: list[pq.abc.PGresult] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                if error is not None:
                    raise error
                return results
            if result.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
            results.append(result)
        _wait(pgconn.socket, selectors.EVENT_READ, deadline)


def close_at_once(conn: psycopg.Connection[Any]) -> None:
    """Close ``conn`` without waiting on the network (its goodbye message is sent only if
    the socket takes it at once)."""
    if conn.closed:
        return
    with contextlib.suppress(psycopg.Error):  # already broken: closing sends nothing
        conn.pgconn.nonblocking = 1
    conn.close()


def _wait(fileno: int, event: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with selectors.DefaultSelector() as selector:
            selector.register(fileno, event)
            if selector.select(remaining):
                return
    raise TimeoutError("no answer from the server in time (a silent network?)")


def _notifications(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    encoding = conn.info.encoding
    found = []
    while (notify := conn.pgconn.notifies()) is not None:
        found.append((notify.relname.decode(encoding), notify.extra.decode(encoding)))
    return found
