"""The Rust port's recovery and migration checks that apply to pgworker: recovery
settings, concurrent sweeps, and migration errors that must surface (ids in
tests/behaviours.toml)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from processes import wait_for
from proxy import Link, Proxy, server_address
from psycopg.conninfo import make_conninfo

from pgworker import App, Job, MigrationError, Plugin, Recovery, store_recovery
from pgworker.hooks import Hooks
from pgworker.recovery import Sweeper

Conn = psycopg.Connection[tuple[Any, ...]]

FAST = Recovery(heartbeat_interval=0.2, stale_after=1.0, sweep_interval=0.3)


def registry(db: Conn, schema: str) -> list[str]:
    return [r[0] for r in db.execute(f'select id from "{schema}"._private_workers').fetchall()]


@pytest.mark.gw("RS-02")
def test_recovery_settings_are_kept_and_off_means_no_registration(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    assert make_app(recovery=FAST).recovery == FAST
    assert Recovery() == Recovery(
        enabled=True, heartbeat_interval=10.0, stale_after=45.0, sweep_interval=15.0
    )
    app = make_app(recovery=Recovery(enabled=False))

    @app.task("t")
    def t(payload: dict[str, Any]) -> None:
        pass

    with app:
        app.migrate()
        with app.start() as handle:
            assert handle.worker.wait_listening(5)
            assert registry(db, schema) == []
    on = make_app(recovery=FAST)
    on.task("t")(t)
    with on, on.start() as handle:
        assert registry(db, schema) == [handle.worker_id]


class Recovered(Plugin):
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[int]]] = []

    def on_workers_recovered(self, worker_ids: list[str], job_ids: list[int]) -> None:
        self.calls.append((worker_ids, job_ids))


def job_of_a_dead_worker(app: App, db: Conn, schema: str, *, last_error: str | None = None) -> Job:
    """A job locked a minute ago by ``pgworker-dead``, a registered worker whose last
    heartbeat is as old: dead for any sweep."""
    job = app.defer("elsewhere", {})
    db.execute(
        f"""update "{schema}"._private_jobs set locked_by = 'pgworker-dead',
        locked_at = now() - interval '1 minute', attempts = 1, last_error = %s
        where id = %s""",
        [last_error, job.id],
    )
    db.execute(
        f"""insert into "{schema}"._private_workers (id, last_heartbeat_at, metadata)
        values ('pgworker-dead', now() - interval '1 minute', '{{"runtime": "pgworker"}}')"""
    )
    return job


@pytest.mark.gw("RS-05", "RS-06")
def test_two_sweeps_at_once_recover_a_dead_workers_job_once(
    opened: App, db: Conn, schema: str, database_url: str
) -> None:
    job = job_of_a_dead_worker(opened, db, schema)
    recorded = Recovered()
    sweepers = [Sweeper(opened.store, database_url, FAST, Hooks([recorded])) for _ in range(2)]
    barrier = threading.Barrier(2)

    def sweep(sweeper: Sweeper) -> None:
        barrier.wait(5)
        sweeper.sweep()

    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        for sweeper in sweepers:
            sweeper.close()
    assert recorded.calls == [(["pgworker-dead"], [job.id])]
    row = db.execute(f'select attempts, locked_by, last_error from "{schema}".jobs').fetchone()
    assert row is not None
    assert row == (
        0,
        None,
        "Recovered from dead worker pgworker-dead (no heartbeat); recovery 1 in a row",
    )


def test_an_error_text_that_looks_like_a_huge_recovery_count_does_not_jam_the_sweep(
    opened: App, db: Conn, schema: str, database_url: str
) -> None:
    """Regression: the count read back from last_error was cast to int, and a text
    ending in "; recovery 99999999999 in a row" (a task's own error could) made every
    sweep fail, leaving all of that batch's dead workers' jobs locked."""
    job_of_a_dead_worker(
        opened, db, schema, last_error="ValueError: x; recovery 99999999999 in a row"
    )
    sweeper = Sweeper(opened.store, database_url, FAST, Hooks([]))
    try:
        sweeper.sweep()
    finally:
        sweeper.close()
    row = db.execute(f'select attempts, locked_by, last_error from "{schema}".jobs').fetchone()
    assert row == (
        0,
        None,
        "Recovered from dead worker pgworker-dead (no heartbeat); recovery 1 in a row",
    )


class SilentAfterSweepLock(Proxy):
    """Forwards a sweep's lock statement, then drops every answer on that connection: a
    network that died while the sweep held the lock."""

    def client_sent(self, link: Link, data: bytes) -> bool:
        if b"pg_try_advisory_xact_lock" in data:
            link.swallow.set()
        return True


def test_a_sweep_whose_client_goes_silent_frees_the_sweep_lock(
    opened: App, db: Conn, schema: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a sweeper whose connection went silent inside its transaction kept the
    sweep lock on the server until the server noticed the dead client (hours with the
    default keepalives): no worker could sweep meanwhile. The sweep's transaction now
    tells the server to end it once idle for a while (10 s; 1 s here)."""
    monkeypatch.setattr(store_recovery, "SWEEP_IDLE_TIMEOUT", 1.0)
    job = job_of_a_dead_worker(opened, db, schema)
    proxy = SilentAfterSweepLock(server_address(database_url))
    silent = Sweeper(opened.store, proxy.conninfo(database_url), FAST, Hooks([]))
    recorded = Recovered()
    other = Sweeper(opened.store, database_url, FAST, Hooks([recorded]))
    try:
        threading.Thread(target=silent.sweep, daemon=True).start()
        wait_for(lambda: any(link.swallow.is_set() for link in proxy.links), 10, "the lock")

        def swept() -> bool:
            other.sweep()
            return bool(recorded.calls)

        wait_for(swept, 10, "another sweeper to get the lock", interval=0.2)
        assert recorded.calls == [(["pgworker-dead"], [job.id])]
    finally:
        other.close()
        proxy.go_down()


@pytest.mark.gw("MIG-10")
def test_a_migration_statement_failing_surfaces_its_sqlstate(
    app: App, db: Conn, schema: str
) -> None:
    with app:
        app.migrate()
    # Back to revision 19, with a ledger that refuses the insert of revision 20.
    db.execute(f'delete from "{schema}".migrations where id = 20')
    db.execute(f'drop table "{schema}"._private_workers cascade')
    db.execute(
        f"""create function "{schema}".refuse() returns trigger language plpgsql
        as $$ begin perform 1 / 0; return new; end $$"""
    )
    db.execute(
        f'create trigger refuse before insert on "{schema}".migrations '
        f'for each row execute function "{schema}".refuse()'
    )
    with app, pytest.raises(MigrationError, match="division by zero") as caught:
        app.migrate()
    cause = caught.value.__cause__
    assert isinstance(cause, psycopg.Error)
    assert cause.sqlstate == "22012"
    assert db.execute(f'select max(id) from "{schema}".migrations').fetchone() == (19,)


@pytest.fixture
def stranger(db: Conn, database_url: str) -> Iterator[str]:
    """A connection string for a role of its own, with no rights on any worker schema."""
    role = f"pgw_stranger_{secrets.token_hex(4)}"
    db.execute(f'create role "{role}" login')
    yield make_conninfo(database_url, user=role)
    db.execute(f'drop owned by "{role}"')
    db.execute(f'drop role "{role}"')


@pytest.mark.gw("MIG-11")
def test_a_ledger_that_cannot_be_read_is_an_error_not_a_reinstall(
    make_app: Callable[..., App], db: Conn, schema: str, stranger: str
) -> None:
    owner = make_app()
    with owner:
        owner.migrate()
    before = db.execute(f'select count(*), max(ts) from "{schema}".migrations').fetchone()
    with make_app(database_url=stranger) as app, pytest.raises(MigrationError) as caught:
        app.migrate()
    cause = caught.value.__cause__
    assert isinstance(cause, psycopg.Error)
    assert cause.sqlstate == "42501"
    assert "needs more privileges" in str(caught.value)
    assert db.execute(f'select count(*), max(ts) from "{schema}".migrations').fetchone() == before
