"""Listener: a dedicated LISTEN connection that wakes the worker when jobs are added, and
heals itself when that connection dies, loudly or silently."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from .connections import CONNECT_OPTIONS, backoff_delay
from .hooks import Hooks
from .roundtrip import close_at_once
from .store import Store

logger = logging.getLogger(__name__)

#: The channels of queries.sql's "listen" statement.
JOBS_CHANNEL = "jobs:insert"
MIGRATE_CHANNEL = "worker:migrate"
CANCEL_CHANNEL = "pgworker:cancel"
#: How long one wait for notifications lasts before the stop flag is checked again.
WAIT_SLICE = 0.5
#: After this many seconds without a notification the connection is checked with a round
#: trip, which must come back within ``CHECK_TIMEOUT`` seconds or the connection counts
#: as dead: a silent one is noticed within about three seconds.
CHECK_AFTER = 1.0
CHECK_TIMEOUT = 2.0
#: The listener's connection options: a quicker connect timeout than other threads' (the
#: worker polls meanwhile), and TCP keepalives and a user timeout as a backstop for the
#: round trips (the kernel then ends a dead connection within about 15 s).
LISTEN_CONNECT_OPTIONS: dict[str, Any] = {
    **CONNECT_OPTIONS,
    "connect_timeout": 5,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
#: While the LISTEN connection is down the worker polls at least this often.
POLL_WHILE_DOWN = 0.5


@dataclass(frozen=True, slots=True)
class ListenState:
    """What a worker's LISTEN connection is doing: ``listening``, or not (reconnecting,
    the worker polling meanwhile) since ``since`` (UTC), and why it went down."""

    listening: bool
    since: datetime
    reason: str | None = None

    def poll_interval(self, configured: float) -> float:
        """How often the worker should poll in this state."""
        return configured if self.listening else min(configured, POLL_WHILE_DOWN)

    def as_metadata(self) -> dict[str, Any]:
        """The ``listen`` entry of the worker's registry metadata (``pgworker workers``)."""
        entry: dict[str, Any] = {
            "state": "listening" if self.listening else "reconnecting",
            "since": self.since.isoformat(),
        }
        if self.reason is not None:
            entry["reason"] = self.reason[:200]
        return entry


class Listener:
    """Keeps ``LISTEN "jobs:insert"`` (and ``"worker:migrate"``, ``"pgworker:cancel"``)
    open and calls ``on_notify`` for each added batch, ``on_cancel`` for each cancel
    request.

    A connection that errors, or that stays silent for ``CHECK_TIMEOUT`` seconds when
    asked for a round trip, is closed at once; the listener then reconnects with jittered
    backoff (at most 5 s apart). When it goes down (or the first connection fails) one
    warning is logged and the plugins' ``on_listen_lost`` called; when it is back, one
    info line and ``on_listen_restored``. Failed attempts in between log at debug level
    only. ``on_state`` hears every change, the first connection included.

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
        hooks: Hooks | None = None,
        on_state: Callable[[ListenState], None] = lambda state: None,
    ) -> None:
        self.store = store
        self.conninfo = conninfo
        self.on_notify = on_notify
        self.on_breaking = on_breaking
        self.on_cancel = on_cancel
        self.hooks = hooks or Hooks()
        self.on_state = on_state
        self._connected = threading.Event()
        self._down_since: float | None = None  # monotonic; None while up or never tried
        self.connections = 0
        self.losses = 0

    @property
    def is_listening(self) -> bool:
        """Whether the LISTEN connection is up right now."""
        return self._connected.is_set()

    def wait_listening(self, timeout: float) -> bool:
        """Wait until the LISTEN connection is up."""
        return self._connected.wait(timeout)

    def run(self, stop: threading.Event) -> None:
        """The thread's body: listen, and reconnect, until ``stop`` is set (noticed within
        ``WAIT_SLICE``, or ``CHECK_TIMEOUT`` during a round trip)."""
        attempt = 0
        while not stop.is_set():
            try:
                self._listen(stop)
                continue
            except (psycopg.Error, OSError) as exc:  # TimeoutError: a silent connection
                reason = " ".join(str(exc).split()) or type(exc).__name__
                unexpected = False
            except Exception as exc:  # keep listening whatever happens; polling covers it
                reason = f"unexpected error: {exc!r}"
                unexpected = True
            if stop.is_set():
                break
            if self._connected.is_set() or self._down_since is None:
                attempt = 0  # a new loss, not the same one again
                self._lose(reason, exc_info=unexpected)
            else:
                logger.debug("LISTEN reconnection failed: %s", reason)
            delay = backoff_delay(attempt)
            attempt += 1
            stop.wait(delay)
        self._connected.clear()

    def _listen(self, stop: threading.Event) -> None:
        conn = psycopg.connect(self.conninfo, **LISTEN_CONNECT_OPTIONS)
        try:
            early = self.store.listen(conn, timeout=CHECK_TIMEOUT)
            self._restore()
            self._handle_all(early)
            self.on_notify()
            last_heard = time.monotonic()
            while not stop.is_set():
                for notify in conn.notifies(timeout=WAIT_SLICE):
                    self._handle(notify.channel, notify.payload)
                    last_heard = time.monotonic()
                if time.monotonic() - last_heard >= CHECK_AFTER:
                    self._handle_all(self.store.ping(conn, timeout=CHECK_TIMEOUT))
                    last_heard = time.monotonic()
        finally:
            close_at_once(conn)

    def _lose(self, reason: str, *, exc_info: bool) -> None:
        """The connection went down (or could not be made at first): say so once."""
        self._connected.clear()
        self._down_since = time.monotonic()
        self.losses += 1
        logger.warning(
            "LISTEN connection lost (%s): polling for jobs until it is back; reconnecting",
            reason,
            exc_info=exc_info,
        )
        self.on_state(ListenState(False, datetime.now(UTC), reason))
        self.hooks.listen_lost(reason)

    def _restore(self) -> None:
        """Subscribed again: say so once, if it had been down."""
        self.connections += 1
        self._connected.set()
        self.on_state(ListenState(True, datetime.now(UTC)))
        if self._down_since is None:
            return
        seconds_down = time.monotonic() - self._down_since
        self._down_since = None
        logger.info("LISTEN connection restored after %.1f s", seconds_down)
        self.hooks.listen_restored(seconds_down)

    def _handle_all(self, notifications: Iterable[tuple[str, str]]) -> None:
        for channel, payload in notifications:
            self._handle(channel, payload)

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
