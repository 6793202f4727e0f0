"""The worker schema: what a fresh install holds, and how existing ledgers are treated."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgworker import App, IncompatibleSchemaError, MigrationError, MigrationOutcome
from pgworker.migrate import BREAKING_REVISIONS, migrate

Conn = psycopg.Connection[tuple[Any, ...]]

EXPECTED_COLUMNS = {
    "_private_jobs": [
        "id", "job_queue_id", "task_id", "payload", "priority", "run_at", "attempts",
        "max_attempts", "last_error", "created_at", "updated_at", "key", "locked_at",
        "locked_by", "revision", "flags", "is_available",
    ],
    "_private_job_queues": ["id", "queue_name", "locked_at", "locked_by", "is_available"],
    "_private_tasks": ["id", "identifier"],
    "_private_known_crontabs": ["identifier", "known_since", "last_execution"],
    "migrations": ["id", "ts", "breaking"],
    "_private_workers": ["id", "last_heartbeat_at", "started_at", "metadata"],
    "jobs": [
        "id", "queue_name", "task_identifier", "priority", "run_at", "attempts",
        "max_attempts", "last_error", "created_at", "updated_at", "key", "locked_at",
        "locked_by", "revision", "flags",
    ],
}  # fmt: skip

EXPECTED_FUNCTIONS = {
    "add_job": "identifier text, payload json, queue_name text, run_at timestamp with time "
    "zone, max_attempts integer, job_key text, priority integer, flags text[], "
    "job_key_mode text",
    "add_jobs": "specs {schema}.job_spec[], job_key_preserve_run_at boolean",
    "complete_jobs": "job_ids bigint[]",
    "force_unlock_workers": "worker_ids text[]",
    "permanently_fail_jobs": "job_ids bigint[], error_message text",
    "remove_job": "job_key text",
    "reschedule_jobs": "job_ids bigint[], run_at timestamp with time zone, priority integer, "
    "attempts integer, max_attempts integer",
    # Revision 20, the Rust port's worker registry.
    "worker_heartbeat": "worker_id text, metadata json",
    "worker_deregister": "worker_id text",
    "list_stale_workers": "stale_threshold interval",
    "list_orphan_locked_workers": "stale_threshold interval",
    "recover_dead_worker_jobs": "worker_ids text[], recovery_delay interval",
    "delete_stale_workers": "worker_ids text[]",
}

EXPECTED_CONSTRAINTS = {
    "job_queues_pkey1", "job_queues_queue_name_key", "job_queues_queue_name_check",
    "jobs_key_key1", "jobs_pkey1", "jobs_key_check", "jobs_max_attempts_check",
    "known_crontabs_pkey", "migrations_pkey", "tasks_identifier_key", "tasks_pkey",
    "tasks_identifier_check", "_private_workers_pkey",
}  # fmt: skip


def migrated(app: App) -> MigrationOutcome:
    with app:
        return app.migrate()


@pytest.mark.gw("MIG-01", "MIG-15", "MIG-18", "RS-01")
def test_fresh_install_matches_graphile_worker_revision_20(app: App, db: Conn, schema: str) -> None:
    """Node graphile-worker 0.17's revisions 1 to 19 plus the Rust port's 20."""
    assert migrated(app) is MigrationOutcome.INSTALLED
    ledger = db.execute(f'select id, breaking from "{schema}".migrations order by id').fetchall()
    assert [row[0] for row in ledger] == list(range(1, 21))
    assert {row[0] for row in ledger if row[1]} == BREAKING_REVISIONS == {1, 3, 11, 13, 14, 16, 19}

    for table, columns in EXPECTED_COLUMNS.items():
        rows = db.execute(
            "select column_name from information_schema.columns "
            "where table_schema = %s and table_name = %s order by ordinal_position",
            (schema, table),
        ).fetchall()
        assert [r[0] for r in rows] == columns, table

    functions = dict(
        db.execute(
            "select p.proname, pg_get_function_identity_arguments(p.oid) from pg_proc p "
            "join pg_namespace n on n.oid = p.pronamespace where n.nspname = %s",
            (schema,),
        ).fetchall()
    )
    assert functions == {
        name: args.format(schema=schema) for name, args in EXPECTED_FUNCTIONS.items()
    }

    constraints = {
        r[0]
        for r in db.execute(
            "select conname from pg_constraint c join pg_namespace n on n.oid = c.connamespace "
            "where n.nspname = %s and contype <> 'n'",  # PostgreSQL 18 lists NOT NULLs
            (schema,),
        ).fetchall()
    }
    assert constraints == EXPECTED_CONSTRAINTS

    indexes = {
        r[0]: r[1]
        for r in db.execute(
            "select indexname, indexdef from pg_indexes where schemaname = %s", (schema,)
        ).fetchall()
    }
    assert "WHERE (is_available = true)" in indexes["jobs_main_index"]
    assert "INCLUDE (id, task_id, job_queue_id)" in indexes["jobs_main_index"]
    assert "(job_queue_id IS NULL)" in indexes["jobs_no_queue_index"]
    assert "(last_heartbeat_at)" in indexes["_private_workers_last_heartbeat_at_idx"]

    rls = db.execute(
        "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and relrowsecurity order by relname",
        (schema,),
    ).fetchall()
    assert [r[0] for r in rls] == [
        "_private_job_queues",
        "_private_jobs",
        "_private_known_crontabs",
        "_private_tasks",
    ]
    attrs = db.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute a "
        "join pg_type t on t.typrelid = a.attrelid join pg_namespace n on n.oid = t.typnamespace "
        "where n.nspname = %s and t.typname = 'job_spec' and attnum > 0 order by attnum",
        (schema,),
    ).fetchall()
    assert attrs == [
        ("identifier", "text"),
        ("payload", "json"),
        ("queue_name", "text"),
        ("run_at", "timestamp with time zone"),
        ("max_attempts", "smallint"),
        ("job_key", "text"),
        ("priority", "smallint"),
        ("flags", "text[]"),
    ]


@pytest.mark.gw("MIG-02", "MIG-03")
def test_migrating_again_changes_nothing_and_keeps_jobs(app: App, db: Conn, schema: str) -> None:
    with app:
        app.migrate()
        job = app.defer("assert_jobs_work")
        for _ in range(3):
            assert app.migrate() is MigrationOutcome.CURRENT
    rows = db.execute(f'select id, task_identifier from "{schema}".jobs').fetchall()
    assert rows == [(job.id, "assert_jobs_work")]
    assert db.execute(f'select count(*) from "{schema}".migrations').fetchone() == (20,)


@pytest.mark.gw("MIG-04")
def test_concurrent_migrations_end_with_one_schema(
    database_url: str, db: Conn, schema: str
) -> None:
    errors: list[BaseException] = []
    outcomes: list[MigrationOutcome] = []
    barrier = threading.Barrier(8)

    def migrate_once() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait()
                outcomes.append(migrate(conn, schema))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate_once) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(o.value for o in outcomes) == ["current"] * 7 + ["installed"]
    assert db.execute(f'select count(*) from "{schema}".migrations').fetchone() == (20,)
    db.execute(f"""select "{schema}".add_job('after_race')""")


@pytest.mark.gw("MIG-07", "E-01")
def test_newer_breaking_revision_is_refused(app: App, db: Conn, schema: str) -> None:
    migrated(app)
    db.execute(f'insert into "{schema}".migrations (id, breaking) values (999999, true)')
    with pytest.raises(IncompatibleSchemaError, match=r"999999.*up to 20"):
        migrated(app)


@pytest.mark.gw("RS-01")
def test_newer_non_breaking_revisions_are_accepted(
    app: App, db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A database the Rust port migrated has its non-breaking revision 20, and maybe more."""
    migrated(app)
    db.execute(f'insert into "{schema}".migrations (id) values (21)')
    assert migrated(app) is MigrationOutcome.CURRENT
    assert "revision 21, newer than pgworker knows" in caplog.text


def test_revision_18_ledger_is_taken_to_19_and_node_workers_are_told(
    app: App, db: Conn, schema: str, database_url: str
) -> None:
    migrated(app)
    db.execute(f'delete from "{schema}".migrations where id >= 19')
    db.execute(f'drop table "{schema}"._private_workers cascade')
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute('listen "worker:migrate"')
        assert migrated(app) is MigrationOutcome.UPGRADED
        notes = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
    assert notes == ['{"migrationNumber": 19, "breaking": true}']
    assert db.execute(f'select breaking from "{schema}".migrations where id = 19').fetchone() == (
        True,
    )


@pytest.mark.gw("RS-01")
def test_revision_19_ledger_gets_the_worker_registry(app: App, db: Conn, schema: str) -> None:
    """A database Node graphile-worker 0.17 migrated (1 to 19) is taken to 20."""
    migrated(app)
    db.execute(f'delete from "{schema}".migrations where id = 20')
    db.execute(f'drop table "{schema}"._private_workers cascade')
    assert migrated(app) is MigrationOutcome.UPGRADED
    assert db.execute(f'select breaking from "{schema}".migrations where id = 20').fetchone() == (
        False,
    )
    db.execute(f"""select "{schema}".worker_heartbeat('w1', '{{"a": 1}}')""")
    assert db.execute(f'select id, metadata from "{schema}"._private_workers').fetchall() == [
        ("w1", {"a": 1})
    ]


def test_add_jobs_without_the_race_fix_is_upgraded(app: App, db: Conn, schema: str) -> None:
    """A database migrated by Node has add_jobs without the #580 fix: pgworker replaces it."""
    migrated(app)
    definition = f"""
        create or replace function "{schema}".add_jobs(
          specs "{schema}".job_spec[], job_key_preserve_run_at boolean default false
        ) returns setof "{schema}"._private_jobs language sql
        as $$ select null::"{schema}"._private_jobs where false $$
    """
    db.execute(definition)
    assert migrated(app) is MigrationOutcome.UPGRADED
    source = db.execute(
        "select pg_get_functiondef(p.oid) from pg_proc p join pg_namespace n "
        "on n.oid = p.pronamespace where n.nspname = %s and p.proname = 'add_jobs'",
        (schema,),
    ).fetchone()
    assert source is not None
    assert "pg_advisory_xact_lock" in source[0]


def test_old_ledgers_are_sent_to_graphile_worker_first(app: App, db: Conn, schema: str) -> None:
    db.execute(f'create schema "{schema}"')
    db.execute(f'create table "{schema}".migrations (id int primary key, ts timestamptz)')
    with pytest.raises(MigrationError, match=r"older than 0\.11"):
        migrated(app)
    db.execute(f'alter table "{schema}".migrations add column breaking boolean default false')
    db.execute(f'insert into "{schema}".migrations (id) select generate_series(1, 10)')
    with pytest.raises(MigrationError, match=r"revision 10, older than graphile-worker 0\.16"):
        migrated(app)


@pytest.mark.gw("MIG-16", "MIG-17")
def test_schema_names_that_need_quoting_work(make_app: Callable[..., App], db: Conn) -> None:
    name = "Case-Schema select"
    app = make_app(schema=name)
    ran: list[dict[str, Any]] = []

    @app.task("echo")
    def echo(payload: dict[str, Any]) -> None:
        ran.append(payload)

    try:
        with app:
            app.migrate()
            echo.defer({"a": 1})
            app.run_once()
        assert ran == [{"a": 1}]
    finally:
        db.execute(f'drop schema if exists "{name}" cascade')
