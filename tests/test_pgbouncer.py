"""Scale-out behind PgBouncer in transaction mode: three worker processes, poll-only and
without prepared statements, drain a few thousand jobs through a real PgBouncer (started
here on loopback), each job once, and every worker backend comes through PgBouncer."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from processes import wait_for
from supervised import (
    alive,
    create_ledger,
    drop_ledger,
    ledger_rows,
    remaining_jobs,
    runs_per_job,
    start_supervisor,
)

from benchmarks.phases import defer_many

#: Set by .ci/run, where a missing pgbouncer is a failure rather than a skip.
REQUIRE_VARIABLE = "PGWORKER_REQUIRE_PGBOUNCER"
#: The alias PgBouncer serves the test database under.
ALIAS = "pgw_bounced"
#: The application_name of the workers' connections to PgBouncer (SHOW CLIENTS shows it).
CLIENT_NAME = "pgw-bounced-worker"
#: PgBouncer's default_pool_size here: server connections per database and user.
POOL_SIZE = 8
JOBS = 3000
PROCESSES = 3


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if found is None:
        reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer; CI installs it)"
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bouncer:
    """A PgBouncer on 127.0.0.1:``port`` in front of the test database, which it reaches
    at ``host`` (an address, or the unix socket directory of the embedded server)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, host: str) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.host = host

    def url(self, dbname: str = ALIAS, application_name: str = "") -> str:
        suffix = f"?application_name={application_name}" if application_name else ""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}{suffix}"

    def admin(self, command: str) -> list[dict[str, Any]]:
        """The rows of an admin console command (SHOW ...), as dicts."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as conn:
            cursor = conn.execute(command)
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def run_as(host: str) -> list[str]:
    """PgBouncer's ``-u`` option as root (it refuses to run as root: it reads its config,
    then becomes that user): the owner of a unix socket directory, who can reach the
    socket in it (the embedded server's is its data directory, 0700), else postgres."""
    if os.geteuid() != 0:
        return []
    if host.startswith("/"):
        return ["-u", pwd.getpwuid(Path(host).stat().st_uid).pw_name]
    return ["-u", "postgres"]


@pytest.fixture
def bouncer(database_url: str, tmp_path: Path) -> Iterator[Bouncer]:
    """PgBouncer in transaction mode, configured in tmp_path, trusting every client."""
    binary = pgbouncer_binary()
    target = psycopg.conninfo.conninfo_to_dict(database_url)
    host = target.get("host") or "127.0.0.1"  # a unix socket directory for embedded
    port = free_port()
    users = tmp_path / "users.txt"
    users.write_text(f'"{target.get("user") or "postgres"}" ""\n')
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{ALIAS} = host={host} port={target.get('port') or 5432} "
        f"dbname={target['dbname']} user={target.get('user') or 'postgres'}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\nadmin_users = postgres\n"
        f"pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\nmax_client_conn = 500\n"
    )
    log = tmp_path / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, *run_as(host), str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    running = Bouncer(proc, port, log, host)

    def accepting() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"pgbouncer exited with {proc.returncode}:\n{log.read_text()}")
        try:
            running.admin("SHOW VERSION")
        except psycopg.OperationalError:
            return False
        return True

    try:
        wait_for(accepting, 15, "pgbouncer to accept connections", interval=0.1)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def ledger(database_url: str, schema: str) -> Iterator[str]:
    name = f"{schema}_ledger"
    create_ledger(database_url, name)
    yield name
    drop_ledger(database_url, name)


def test_three_processes_through_pgbouncer_in_transaction_mode_lose_nothing(
    bouncer: Bouncer, database_url: str, schema: str, ledger: str, tmp_path: Path
) -> None:
    config = {row["key"]: row["value"] for row in bouncer.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    supervised = start_supervisor(
        bouncer.url(application_name=CLIENT_NAME),
        schema,
        ledger,
        tmp_path / "supervisor.log",
        "--processes", str(PROCESSES), "-j", "4", "--prefetch", "10",
        "--no-listen", "--no-prepared-statements", "--poll-interval", "0.2",
    )  # fmt: skip
    try:
        pids = supervised.wait_children(PROCESSES)
        wait_for(
            lambda: supervised.text().count(" started: pgworker ") >= PROCESSES,
            60,
            "every worker to start",
            detail=supervised.log,
        )
        # The jobs go in through PgBouncer too: three add_jobs calls, fewer than psycopg's
        # prepare threshold.
        defer_many(bouncer.url(), schema, JOBS, JOBS // 3)
        wait_for(
            lambda: (
                remaining_jobs(database_url, schema) == 0
                and len(ledger_rows(database_url, ledger)) >= JOBS
            ),
            120,
            "the queue to drain through pgbouncer",
            detail=supervised.log,
            interval=0.2,
        )
        assert_backends_come_through(bouncer, database_url)
        rows = ledger_rows(database_url, ledger)
        runs = runs_per_job(rows)
        assert len(runs) == JOBS
        assert set(runs.values()) == {1}, "a job ran more than once"
        assert {int(row[1]) for row in rows} <= set(pids)
        text = supervised.text()
        assert "Traceback" not in text
        assert "prepared statement" not in text
        supervised.proc.send_signal(signal.SIGTERM)
        assert supervised.wait_exit(30) == 0, supervised.log()
        assert not [pid for pid in supervised.started_pids() if alive(pid)]
    finally:
        supervised.kill()


def assert_backends_come_through(bouncer: Bouncer, database_url: str) -> None:
    """Every backend of the workers on the test database is a server connection of
    PgBouncer (SHOW SERVERS' remote_pid), and the workers are PgBouncer's clients."""
    clients = [c for c in bouncer.admin("SHOW CLIENTS") if c["application_name"] == CLIENT_NAME]
    # Each worker process keeps its pool's connections open to PgBouncer.
    assert len({(c["addr"], c["port"]) for c in clients}) >= PROCESSES, clients
    servers = bouncer.admin("SHOW SERVERS")
    server_pids = {int(s["remote_pid"]) for s in servers}
    assert {s["database"] for s in servers} == {ALIAS}
    with psycopg.connect(database_url, autocommit=True, application_name="pgw-check") as conn:
        backends = conn.execute(
            "select pid, client_addr::text, application_name from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid() "
            "and backend_type = 'client backend'"
        ).fetchall()
    pool = next(p for p in bouncer.admin("SHOW POOLS") if p["database"] == ALIAS)
    assert pool["pool_mode"] == "transaction"
    # PgBouncer passes its clients' application_name on to the server connection: a
    # worker connection that bypassed it would show the name with a pid not its own.
    workers = [b for b in backends if b[2] == CLIENT_NAME]
    assert workers, f"no backend of the workers: {backends}"
    direct = [b for b in workers if b[0] not in server_pids]
    assert not direct, f"worker backends that did not come through PgBouncer: {direct}"
    # From PgBouncer on loopback, or on the unix socket of the embedded server (no address).
    on_socket = bouncer.host.startswith("/")
    assert {b[1] for b in workers} == {None if on_socket else "127.0.0.1/32"}
    # Transaction pooling: the clients share at most default_pool_size server connections.
    assert len(server_pids) <= POOL_SIZE < len(clients), (len(server_pids), len(clients))
