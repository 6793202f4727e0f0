"""A private PostgreSQL cluster (initdb in a temporary directory, a free loopback port)
that a fault test or the fault harness starts, stops and throws away itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: Where PostgreSQL's server binaries are looked for, first match wins (PGWORKER_PG_BIN
#: overrides).
BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
#: initdb and postgres refuse to run as root: as root, they run as this user.
SERVER_USER = "postgres"
#: Seconds pg_ctl waits for a start or a stop.
PG_CTL_TIMEOUT = 60


def find_bin() -> Path:
    """The directory holding initdb and pg_ctl."""
    override = os.environ.get("PGWORKER_PG_BIN")
    candidates = [override] if override else list(BIN_CANDIDATES)
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: set PGWORKER_PG_BIN")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL cluster of our own: loopback only, unix socket in its directory.

    ``create()`` runs initdb and starts it; ``stop(mode)``/``start()``/``restart(mode)``
    drive pg_ctl; ``destroy()`` stops it (immediately) and deletes its directory.
    """

    def __init__(self, *, max_connections: int = 100, settings: dict[str, str] | None = None):
        self.bin = find_bin()
        self.root = Path(tempfile.mkdtemp(prefix="pgw-faults-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.max_connections = max_connections
        self.settings = settings or {}

    @property
    def url(self) -> str:
        """A URL of the cluster's ``postgres`` database, over loopback TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        proc = subprocess.run(
            [*prefix, *command],
            capture_output=True,
            text=True,
            timeout=PG_CTL_TIMEOUT + 30,
            check=False,
        )
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
                f"--- server log ---\n{tail}"
            )
        return proc

    def create(self) -> Cluster:
        """initdb (trust authentication: loopback only, a throwaway cluster), then start."""
        if os.geteuid() == 0:
            self.root.chmod(0o755)
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()
        return self

    def _options(self) -> str:
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "max_connections": str(self.max_connections),
            **self.settings,
        }
        return " ".join(f"-c {name}={value}" for name, value in settings.items())

    def start(self) -> float:
        """Start the server; returns time.time() once it accepts connections."""
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-w",
            "-t",
            str(PG_CTL_TIMEOUT),
            "start",
        )
        return time.time()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back and disconnect; ``immediate``: crash)."""
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            mode,
            "-w",
            "-t",
            str(PG_CTL_TIMEOUT),
            "stop",
        )

    def restart(self, mode: str = "fast") -> float:
        """Stop, then start; returns time.time() once it accepts connections again."""
        self.stop(mode)
        return self.start()

    def running(self) -> bool:
        """Whether the server's pid file names a live postmaster."""
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop the server if it runs, and delete its files."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
