"""Listener: a dedicated LISTEN connection that wakes the worker when jobs are added."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import psycopg

from .connections import backoff_delay, connect
from .store import Store

logger = logging.getLogger(__name__)

#: The channels of queries.sql's "listen" statement.
JOBS_CHANNEL = "jobs:insert"
MIGRATE_CHANNEL = "worker:migrate"
CANCEL_CHANNEL = "pgworker:cancel"
#: How long one wait for notifications lasts before the stop flag is checked again.
WAIT_SLICE = 0.5
#: A quiet connection is checked with a round trip this often, to notice a dead one.
HEALTH_CHECK_INTERVAL = 10.0


class Listener:
    """Keeps ``LISTEN "jobs:insert"`` (and ``"worker:migrate"``, ``"pgworker:cancel"``)
    open, reconnecting after any loss with jittered backoff, and calls ``on_notify`` for
    each added batch, ``on_cancel`` for each cancel request.

    After every (re)connection it also calls ``on_notify``: jobs added while it was
    disconnected would otherwise wait for the next poll.
    """

    def __init__(
        self,
        store: Store,
        conninfo: str,
        *,
        on_notify: Callable[[], None],
        on_breaking: Callable[[int], None],
        on_cancel: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.conninfo = conninfo
        self.on_notify = on_notify
        self.on_breaking = on_breaking
        self.on_cancel = on_cancel
        self._connected = threading.Event()
        self.connections = 0

    @property
    def is_listening(self) -> bool:
        """Whether the LISTEN connection is up right now."""
        return self._connected.is_set()

    def wait_listening(self, timeout: float) -> bool:
        """Wait until the LISTEN connection is up."""
        return self._connected.wait(timeout)

    def run(self, stop: threading.Event) -> None:
        """The thread's body: listen, and reconnect, until ``stop`` is set (noticed within
        ``WAIT_SLICE``)."""
        attempt = 0
        while not stop.is_set():
            try:
                self._listen(stop)
                attempt = 0
            except (psycopg.Error, OSError) as exc:
                if self._connected.is_set():
                    attempt = 0  # it was up: this is a new loss, not the same one again
                self._connected.clear()
                delay = backoff_delay(attempt)
                attempt += 1
                logger.warning(
                    "LISTEN connection lost (%s); reconnecting in %.2f s",
                    str(exc).strip() or type(exc).__name__,
                    delay,
                )
                stop.wait(delay)
            except Exception:  # keep listening whatever happens; polling covers the gap
                self._connected.clear()
                logger.exception("Unexpected error in the listener")
                stop.wait(1.0)
        self._connected.clear()

    def _listen(self, stop: threading.Event) -> None:
        with connect(self.conninfo) as conn:
            self.store.listen(conn)
            if self.connections:
                logger.info("LISTEN connection re-established")
            self.connections += 1
            self._connected.set()
            self.on_notify()
            last_check = time.monotonic()
            while not stop.is_set():
                for notify in conn.notifies(timeout=WAIT_SLICE):
                    self._handle(notify.channel, notify.payload)
                    last_check = time.monotonic()
                if time.monotonic() - last_check > HEALTH_CHECK_INTERVAL:
                    self.store.ping(conn)
                    last_check = time.monotonic()

    def _handle(self, channel: str, payload: str) -> None:
        if channel == JOBS_CHANNEL:
            if _job_count(payload) > 0:
                self.on_notify()
        elif channel == CANCEL_CHANNEL:
            self.on_cancel()
        elif channel == MIGRATE_CHANNEL:
            try:
                message = json.loads(payload)
                if message.get("breaking"):
                    self.on_breaking(int(message.get("migrationNumber", 0)))
            except (ValueError, AttributeError, TypeError):
                logger.debug("Ignoring unreadable %s payload %r", MIGRATE_CHANNEL, payload)


def _job_count(payload: str) -> int:
    """The ``count`` of a jobs:insert payload; 1 when it is missing or unreadable (old
    schemas sent empty payloads)."""
    try:
        count = json.loads(payload)["count"]
        return int(count)
    except (ValueError, KeyError, TypeError):
        return 1
