"""Self-healing LISTEN: a worker whose LISTEN connection dies (an error, or a network that
goes silent without closing it) notices within seconds, logs it once, tells plugins,
polls meanwhile, reconnects, and shows the state in ``pgworker workers``.

The workers here poll every 5 s when listening, so a job that starts within 100 ms of
being added was woken by LISTEN, not found by a poll."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from processes import WorkerProcess, wait_for
from proxy import LISTEN_MARKER, Proxy, server_address

from pgworker import App, Plugin, Recovery
from pgworker.cli import cli
from pgworker.listener import POLL_WHILE_DOWN
from pgworker.roundtrip import close_at_once, round_trip

Conn = psycopg.Connection[tuple[Any, ...]]

LOST = "LISTEN connection lost"
RESTORED = "LISTEN connection restored"
#: The poll interval of these workers while LISTEN is up: long enough that no job is
#: found by a poll within a latency test.
SLOW_POLL = "5"
#: The acceptance bounds: healed within 5 s, and then a new job starts within 100 ms.
HEALED_WITHIN = 5.0
STARTS_WITHIN = 0.1


@pytest.fixture
def proxy(database_url: str) -> Iterator[Proxy]:
    """A proxy that knows which of its connections are LISTEN connections."""
    between = Proxy(server_address(database_url), markers=(LISTEN_MARKER,))
    yield between
    between.go_down()


@pytest.fixture
def client(make_app: Callable[..., App]) -> Iterator[App]:
    """An app that adds jobs, on a direct connection, with the schema installed."""
    app = make_app()
    with app:
        app.migrate()
        yield app


class Registry:
    """``pgworker workers`` on a direct connection."""

    def __init__(self, database_url: str, schema: str) -> None:
        self.args = ["workers", "--database-url", database_url, "--schema", schema]

    def output(self, *extra: str) -> str:
        result = CliRunner().invoke(cli, [*self.args, *extra])
        assert result.exit_code == 0, result.output
        return result.output

    def listen_cell(self, worker_id: str) -> str | None:
        """The LISTEN column of ``worker_id``'s line."""
        lines = self.output().splitlines()
        start, end = lines[0].index("LISTEN"), lines[0].index("HOST")
        for line in lines[1:]:
            if line.startswith(worker_id):
                return line[start:end].strip()
        return None

    def listen_json(self, worker_id: str) -> Any:
        """The ``listen`` entry of ``worker_id`` in ``--json``."""
        workers = json.loads(self.output("--json"))["workers"]
        (mine,) = [w for w in workers if w["worker_id"] == worker_id]
        return mine["listen"]

    def wait_cell(self, worker: WorkerProcess, worker_id: str, starts: str, timeout: float) -> str:
        """Wait until the LISTEN column of ``worker_id`` starts with ``starts``."""

        def shown() -> str | None:
            worker.running()
            cell = self.listen_cell(worker_id)
            return cell if cell is not None and cell.startswith(starts) else None

        return wait_for(shown, timeout, f"pgworker workers to show {starts!r}", detail=worker.log)


@pytest.fixture
def registry(database_url: str, schema: str) -> Registry:
    return Registry(database_url, schema)


def spawn_listening(
    spawn_worker: Callable[..., WorkerProcess], registry: Registry, database_url: str
) -> tuple[WorkerProcess, str]:
    """A ``fault_app`` worker on ``database_url`` that polls every 5 s, once its LISTEN
    connection is up (its registry row says so)."""
    worker = spawn_worker(extra_args=("--database-url", database_url, "--poll-interval", SLOW_POLL))
    worker_id = worker.worker_id()
    registry.wait_cell(worker, worker_id, "listening", 10)
    return worker, worker_id


def start_latency(client: App, worker: WorkerProcess, tries: int = 3) -> float:
    """Add ``quick`` jobs one at a time; return the shortest time one took to start
    running in ``worker`` (the best of ``tries``: a loaded machine can stall any one
    of them, while a poll would make every one wait seconds)."""
    latencies = []
    for _ in range(tries):
        added_at = time.time()
        job = client.defer("quick", {})
        ran_at = wait_for(
            lambda job_id=job.id: _event_time(worker, job_id), 10, f"job #{job.id} to run"
        )
        latencies.append(ran_at - added_at)
    return min(latencies)


def _event_time(worker: WorkerProcess, job_id: int) -> float | None:
    log = worker.markers / "events.log"
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        marker, _, at = line.split(" ")
        if marker.startswith(f"{job_id}-"):
            return float(at)
    return None


def test_a_silent_listen_connection_heals_within_five_seconds(
    spawn_worker: Callable[..., WorkerProcess],
    proxy: Proxy,
    client: App,
    registry: Registry,
    database_url: str,
) -> None:
    """Acceptance: the proxy stops forwarding the LISTEN connection without closing it;
    within 5 s the worker has a new one and a new job starts within 100 ms again."""
    worker, worker_id = spawn_listening(spawn_worker, registry, proxy.conninfo(database_url))
    assert start_latency(client, worker) < STARTS_WITHIN, worker.log()

    silenced_at = time.monotonic()
    assert proxy.freeze(LISTEN_MARKER) == 1
    wait_for(
        lambda: worker.running() and RESTORED in worker.log_path.read_text(),
        HEALED_WITHIN,
        "the listener to notice and reconnect",
        detail=worker.log,
    )
    latency = start_latency(client, worker)
    healed_in = time.monotonic() - silenced_at
    assert latency < STARTS_WITHIN, worker.log()
    assert healed_in < HEALED_WITHIN, worker.log()

    log = worker.log_path.read_text()
    assert log.count(LOST) == 1, worker.log()
    assert "no answer from the server in time" in log
    assert log.count(RESTORED) == 1, worker.log()
    assert len(proxy.links_with(LISTEN_MARKER)) == 2  # the silent one, and its successor
    registry.wait_cell(worker, worker_id, "listening", 1.0)


def test_while_listen_is_down_the_worker_polls_and_says_so(
    spawn_worker: Callable[..., WorkerProcess],
    proxy: Proxy,
    client: App,
    registry: Registry,
    database_url: str,
) -> None:
    """LISTEN connections stay silent for a while (reconnecting fails again and again):
    one "lost" line, ``pgworker workers`` shows "reconnecting since", jobs still run by
    polling; once the network is back, one "restored" line and "listening"."""
    worker, worker_id = spawn_listening(spawn_worker, registry, proxy.conninfo(database_url))
    proxy.freeze(LISTEN_MARKER, new_ones=True)
    cell = registry.wait_cell(worker, worker_id, "reconnecting since ", 10)
    assert re.fullmatch(r"reconnecting since \d\d:\d\d:\d\d", cell)
    assert registry.listen_json(worker_id)["state"] == "reconnecting"
    # Several attempts fail while the network stays silent: still one line.
    wait_for(lambda: len(proxy.links_with(LISTEN_MARKER)) >= 3, 15, "reconnection attempts")
    assert start_latency(client, worker, tries=1) < POLL_WHILE_DOWN + 0.5, worker.log()
    assert worker.log_path.read_text().count(LOST) == 1, worker.log()

    proxy.thaw()
    registry.wait_cell(worker, worker_id, "listening", 10)
    assert start_latency(client, worker) < STARTS_WITHIN, worker.log()
    log = worker.log_path.read_text()
    assert log.count(LOST) == 1, worker.log()
    assert log.count(RESTORED) == 1, worker.log()
    assert registry.listen_json(worker_id)["state"] == "listening"


def test_a_terminated_listen_backend_is_logged_once_and_healed(
    spawn_worker: Callable[..., WorkerProcess],
    client: App,
    registry: Registry,
    database_url: str,
    db: Conn,
) -> None:
    (since,) = db.execute("select now()").fetchone() or ()
    worker, worker_id = spawn_listening(spawn_worker, registry, database_url)
    (pid,) = wait_for(lambda: _listener_pids(db, since), 5, "the listener's backend")
    db.execute("select pg_terminate_backend(%s)", (pid,))
    wait_for(
        lambda: worker.running() and RESTORED in worker.log_path.read_text(),
        HEALED_WITHIN,
        "the listener to reconnect",
        detail=worker.log,
    )
    assert start_latency(client, worker) < STARTS_WITHIN, worker.log()
    log = worker.log_path.read_text()
    assert log.count(LOST) == 1, worker.log()
    assert log.count(RESTORED) == 1, worker.log()
    (new_pid,) = _listener_pids(db, since)
    assert new_pid != pid
    registry.wait_cell(worker, worker_id, "listening", 1.0)


def _listener_pids(db: Conn, since: Any) -> list[int]:
    """The backends of LISTEN connections started after ``since`` (the last statement of
    one is its LISTEN or its health check)."""
    rows = db.execute(
        "select pid from pg_stat_activity where datname = current_database() "
        "and pid <> pg_backend_pid() and backend_start >= %s "
        "and (query like 'LISTEN %%' or query like '%%listener_ping%%')",
        (since,),
    ).fetchall()
    return [row[0] for row in rows]


class ListenWatcher(Plugin):
    """Records the LISTEN hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_listen_lost(self, reason: str) -> None:
        self.calls.append(("lost", reason))

    def on_listen_restored(self, seconds_down: float) -> None:
        self.calls.append(("restored", seconds_down))


def test_plugins_hear_that_listen_was_lost_and_restored(
    make_app: Callable[..., App], proxy: Proxy, database_url: str
) -> None:
    watcher = ListenWatcher()
    app = make_app(database_url=proxy.conninfo(database_url), plugins=[watcher], poll_interval=5)

    @app.task("noop")
    def noop(payload: dict[str, Any]) -> None:
        pass

    with app:
        handle = app.start()
        try:
            assert handle.worker.wait_listening(10)
            assert watcher.calls == []  # the first connection is no restoration
            proxy.freeze(LISTEN_MARKER, new_ones=True)
            wait_for(lambda: watcher.calls, HEALED_WITHIN, "on_listen_lost")
            assert not handle.worker.is_listening
            # While down the fetcher polls at least every POLL_WHILE_DOWN seconds.
            assert handle.worker.fetcher is not None
            assert handle.worker.fetcher.poll_interval == POLL_WHILE_DOWN
            proxy.thaw()
            wait_for(lambda: len(watcher.calls) == 2, 10, "on_listen_restored")
            assert handle.worker.is_listening
            assert handle.worker.fetcher.poll_interval == 5
        finally:
            handle.stop()
    (lost, reason), (restored, seconds_down) = watcher.calls
    assert (lost, restored) == ("lost", "restored")
    assert "no answer from the server in time" in reason
    assert 0 < seconds_down < 15


def test_a_round_trip_on_a_silent_connection_gives_up_at_its_deadline(
    proxy: Proxy, database_url: str, db: Conn
) -> None:
    conn = psycopg.connect(proxy.conninfo(database_url), autocommit=True)
    try:
        assert round_trip(conn, b'LISTEN "jobs:insert"', 2.0) == []
        db.execute("select pg_notify('jobs:insert', '{\"count\": 1}')")
        # A notification that arrives with an answer is handed over, not lost.
        found: list[tuple[str, str]] = []
        wait_for(lambda: found.extend(round_trip(conn, b"select 1", 2.0)) or found, 5, "it")
        assert found == [("jobs:insert", '{"count": 1}')]
        proxy.freeze(LISTEN_MARKER)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            round_trip(conn, b"select 1", 0.5)
        assert 0.5 <= time.monotonic() - started < 1.5
    finally:
        started = time.monotonic()
        close_at_once(conn)  # the statement is still in flight: no goodbye is awaited
        assert time.monotonic() - started < 0.5


#: What the heartbeat statement sends (the start-up registration says otherwise).
HEARTBEAT_MARKER = b"set last_heartbeat_at = now(), metadata = excluded.metadata"


def test_a_heartbeat_lost_in_a_silent_network_is_given_up_and_beaten_again(
    make_app: Callable[..., App], db: Conn, schema: str, database_url: str
) -> None:
    """Regression: a heartbeat waited for its answer as long as the socket stayed open;
    on a connection gone silent (a lost NAT entry, a failover) that was minutes, past
    ``stale_after``, and other workers' sweeps then gave this live worker's running jobs
    to others. A beat now has a deadline (a third of the slack between two beats and
    being taken for dead); past it the connection is dropped and the next beat uses a
    new one, so the registry row never looks stale."""
    proxy = Proxy(server_address(database_url), markers=(HEARTBEAT_MARKER,))
    try:
        recovery = Recovery(heartbeat_interval=0.5, stale_after=4.0, sweep_interval=0.5)
        app = make_app(database_url=proxy.conninfo(database_url), recovery=recovery)
        app.task("idle")(lambda payload: None)
        with app:
            handle = app.start()
            try:
                wait_for(lambda: proxy.links_with(HEARTBEAT_MARKER), 10, "a heartbeat")
                assert proxy.freeze(HEARTBEAT_MARKER) == 1
                ages = []
                until = time.monotonic() + 2 * recovery.stale_after
                while time.monotonic() < until:
                    row = db.execute(
                        f"""select extract(epoch from now() - last_heartbeat_at)::float8
                        from "{schema}"._private_workers where id = %s""",
                        (handle.worker_id,),
                    ).fetchone()
                    assert row is not None
                    ages.append(row[0])
                    time.sleep(0.1)
                assert max(ages) < recovery.stale_after
                assert len(proxy.links_with(HEARTBEAT_MARKER)) >= 2  # beaten anew
            finally:
                handle.stop(timeout=10)
    finally:
        proxy.go_down()
