"""The permission model (docs/permissions.md) with two real roles: a worker role that owns
the worker schema, and an application role that can only add jobs, through pgworker's
SECURITY DEFINER functions, and reads back nothing but ids."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from processes import wait_for
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_examples import run_example

from pgworker import App, ConfigurationError, MigrationError, PgWorkerError, RawJob
from pgworker.cli import cli
from pgworker.migrate import MigrationOutcome

Conn = psycopg.Connection[tuple[Any, ...]]
SECRET = {"card": "4242-secret"}


@dataclass(frozen=True)
class Roles:
    """Two login roles of this test's own and how to connect as each."""

    worker: str
    app: str
    worker_url: str
    app_url: str

    def connect(self, url: str) -> Conn:
        return psycopg.connect(url, autocommit=True)


@pytest.fixture
def roles(database_url: str, db: Conn) -> Iterator[Roles]:
    """A worker role (may create schemas in the database) and an application role (may
    only connect); everything they own or were granted is dropped with them."""
    suffix = secrets.token_hex(4)
    worker, app = f"pgw_worker_{suffix}", f"pgw_app_{suffix}"
    dbname = db.info.dbname
    for role in (worker, app):
        db.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    db.execute(
        sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(dbname), sql.Identifier(worker)
        )
    )
    yield Roles(
        worker,
        app,
        make_conninfo(database_url, user=worker),
        make_conninfo(database_url, user=app),
    )
    for role in (app, worker):
        db.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(role)))
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture
def worker_app(make_app: Callable[..., App], roles: Roles) -> Iterator[App]:
    """The worker role's app: it migrates the schema and grants the app role enqueueing."""
    app = make_app(database_url=roles.worker_url)
    with app:
        app.migrate()
        app.grant_enqueue(roles.app)
        yield app


@pytest.fixture
def enqueue_schema(schema: str) -> str:
    """Where grant_enqueue puts the functions by default."""
    return f"{schema}_enqueue"


@pytest.fixture
def app_app(make_app: Callable[..., App], roles: Roles, enqueue_schema: str) -> Iterator[App]:
    """The application role's app: it defers through the enqueue functions."""
    app = make_app(database_url=roles.app_url, enqueue_schema=enqueue_schema)
    with app:
        yield app


def test_the_worker_runs_what_the_app_role_adds_by_python_and_by_sql(
    worker_app: App, app_app: App, roles: Roles, enqueue_schema: str, schema: str
) -> None:
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(payload: dict[str, Any]) -> None:
        with lock:
            seen.append(payload)

    # One task module, imported by both sides: the worker's and the web app's.
    worker_app.task("record")(record)
    app_app.task("record")(record)

    one = app_app.defer("record", {"n": 1})
    batch = app_app.tasks["record"].defer_many([{"n": 2}, {"n": 3}])
    mixed = app_app.defer_raw([RawJob("record", {"n": 4}), RawJob("record", {"n": 5})])
    awaited = asyncio.run(app_app.tasks["record"].adefer({"n": 8}))
    with roles.connect(roles.app_url) as conn:
        cur = conn.execute(
            sql.SQL("select * from {}.add_job('record', '{{\"n\": 6}}')").format(
                sql.Identifier(enqueue_schema)
            )
        )
        (sql_id,) = cur.fetchone() or (None,)
        # Nothing but the id comes back: one bigint column.
        assert [(c.name, c.type_code) for c in cur.description or ()] == [("add_job", 20)]
        ids = conn.execute(
            sql.SQL("select * from {}.add_jobs(%s)").format(sql.Identifier(enqueue_schema)),
            ('[{"identifier": "record", "payload": {"n": 7}}, {"identifier": "record"}]',),
        ).fetchall()
    assert len(ids) == 2
    added = [one.id, *(j.id for j in batch), *(j.id for j in mixed), sql_id, *(i for (i,) in ids)]
    assert len({*added, awaited.id}) == 9
    assert [j.id for j in batch] == sorted(j.id for j in batch)  # in the order given

    handle = worker_app.start()
    try:
        wait_for(lambda: len(seen) == 9, 15, "the app role's jobs to run")
    finally:
        handle.stop()
    assert sorted(p.get("n", 0) for p in seen) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert worker_app.admin.jobs() == []


def test_a_deferred_job_carries_the_id_and_what_was_asked_which_is_the_stored_row(
    worker_app: App, app_app: App
) -> None:
    """Only the id is read back; for a job without a key, the rest (the request, the
    defaults and the transaction's time) equals the row the worker role sees."""
    job = app_app.defer("t", SECRET, queue="q", priority=3, max_attempts=4, flags=["b", "a"])
    stored = worker_app.admin.job(job.id)
    assert stored is not None
    assert job == stored.job
    plain = app_app.defer_raw([RawJob("t"), RawJob("u", {"x": 1}, priority=-1)])
    for requested in plain:
        listed = worker_app.admin.job(requested.id)
        assert listed is not None
        assert requested == listed.job


@pytest.mark.parametrize(
    "statement",
    [
        "select * from {schema}._private_jobs",
        "select * from {schema}.jobs",
        "select * from {schema}._private_tasks",
        "select * from {schema}.migrations",
        "select {schema}.add_job('t')",
        "select {schema}.add_jobs(array[]::{schema}.job_spec[])",
        "select {schema}.remove_job('k')",
        "select {schema}.complete_jobs(array[1]::bigint[])",
        "insert into {schema}._private_jobs (task_id, payload) values (1, '{{}}')",
        "update {schema}._private_jobs set payload = '{{}}'",
        "delete from {schema}._private_jobs",
        "create table {schema}.mine (id int)",
    ],
)
def test_the_app_role_has_no_way_into_the_worker_schema(
    worker_app: App, roles: Roles, schema: str, statement: str
) -> None:
    worker_app.defer("t", SECRET)
    with (
        roles.connect(roles.app_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"schema {schema}"),
    ):
        conn.execute(sql.SQL(statement).format(schema=sql.Identifier(schema)))


def test_the_functions_are_definer_pinned_id_only_and_not_public(
    worker_app: App, roles: Roles, enqueue_schema: str, db: Conn
) -> None:
    rows = db.execute(
        "select p.proname, p.prosecdef, p.proconfig, p.prorettype::regtype::text, p.proretset,"
        " pg_get_userbyid(p.proowner), has_function_privilege('public', p.oid, 'execute'),"
        " has_function_privilege(%s, p.oid, 'execute')"
        " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = %s order by p.proname",
        (roles.app, enqueue_schema),
    ).fetchall()
    pinned = ["search_path=pg_catalog, pg_temp"]
    assert rows == [
        ("add_job", True, pinned, "bigint", False, roles.worker, False, True),
        ("add_jobs", True, pinned, "bigint", True, roles.worker, False, True),
    ]


def test_job_keys_and_unsafe_dedupe_give_the_app_role_an_id_but_no_payload(
    worker_app: App, app_app: App, roles: Roles, enqueue_schema: str
) -> None:
    """graphile-worker's add_job with unsafe_dedupe returns the row of the job that holds
    the key (its payload included), whoever added it; the definer function returns its id."""
    secret = worker_app.defer("charge", SECRET, job_key="k")
    with roles.connect(roles.app_url) as conn:
        cur = conn.execute(
            sql.SQL(
                "select * from {}.add_job('probe', job_key => 'k', job_key_mode => 'unsafe_dedupe')"
            ).format(sql.Identifier(enqueue_schema))
        )
        assert cur.fetchall() == [(secret.id,)]
        assert len(cur.description or ()) == 1
    deduped = app_app.defer("probe", {"x": 1}, job_key="k", job_key_mode="unsafe_dedupe")
    assert deduped.id == secret.id
    assert "4242" not in repr(deduped)
    # Neither call changed the job that holds the key, nor its payload.
    assert worker_app.admin.payload(secret.id) == SECRET
    listed = worker_app.admin.job(secret.id)
    assert listed is not None
    assert listed.job.task_identifier == "charge"


def test_search_path_tricks_do_not_run_the_app_roles_code_as_the_owner(
    worker_app: App, roles: Roles, enqueue_schema: str, schema: str, db: Conn
) -> None:
    """A function named like a pg_catalog one, in a schema the app role owns and puts
    first on its search_path, would run with the owner's privileges inside a definer
    function that didn't pin search_path. The trap is shown to work on such a function."""
    worker_app.defer("charge", SECRET)
    evil = f"evil_{secrets.token_hex(3)}"
    db.execute(
        sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(db.info.dbname), sql.Identifier(roles.app)
        )
    )
    names = {"evil": sql.Identifier(evil), "schema": sql.Identifier(schema)}
    with roles.connect(roles.app_url) as conn:
        conn.execute(sql.SQL("create schema {evil}").format(**names))
        conn.execute(sql.SQL("grant usage on schema {evil} to public").format(**names))
        conn.execute(sql.SQL("create table {evil}.loot (who text, what text)").format(**names))
        conn.execute(sql.SQL("grant insert on {evil}.loot to public").format(**names))
        conn.execute(
            sql.SQL(
                "create function {evil}.now() returns timestamptz language plpgsql as $$"
                " begin"
                "   insert into {evil}.loot select current_user,"
                "     (select string_agg(payload::text, ',') from {schema}._private_jobs);"
                "   return pg_catalog.now();"
                " end $$"
            ).format(**names)
        )
    # The same wrapper without the pinned search_path: what a careless one looks like.
    with roles.connect(roles.worker_url) as conn:
        conn.execute(
            sql.SQL(
                "create function {enqueue}.careless_add_job(identifier text) returns bigint"
                " language sql security definer"
                " as $$ select jobs.id from {schema}.add_job(identifier) as jobs $$;"
                " grant execute on function {enqueue}.careless_add_job(text) to {app}"
            ).format(
                enqueue=sql.Identifier(enqueue_schema),
                schema=sql.Identifier(schema),
                app=sql.Identifier(roles.app),
            )
        )

    def attack(function: str) -> list[tuple[Any, ...]]:
        with roles.connect(roles.app_url) as conn:
            conn.execute(sql.SQL("set search_path = {evil}, pg_catalog").format(**names))
            added = conn.execute(
                sql.SQL("select {}.{}('victim')").format(
                    sql.Identifier(enqueue_schema), sql.Identifier(function)
                )
            ).fetchone()
            assert added is not None
            assert added[0] is not None
            return conn.execute(sql.SQL("select * from {evil}.loot").format(**names)).fetchall()

    assert attack("add_job") == []
    # The trap is real: without the pin, the app role's now() ran as the worker role
    # and copied another job's payload.
    loot = attack("careless_add_job")
    assert loot
    assert loot[0][0] == roles.worker
    assert "4242-secret" in loot[0][1]


def test_granting_leaves_the_worker_schema_as_graphile_worker_made_it(
    worker_app: App, roles: Roles, enqueue_schema: str, schema: str, db: Conn
) -> None:
    def functions(namespace: str) -> list[str]:
        return [
            name
            for (name,) in db.execute(
                "select p.proname::text from pg_proc p join pg_namespace n"
                " on n.oid = p.pronamespace where n.nspname = %s order by 1",
                (namespace,),
            )
        ]

    assert "add_job" in functions(schema)
    before = functions(schema)
    worker_app.grant_enqueue(roles.app)  # again: idempotent
    assert functions(schema) == before
    assert functions(enqueue_schema) == ["add_job", "add_jobs"]
    assert worker_app.migrate() is MigrationOutcome.CURRENT
    acl = db.execute(
        "select nspacl::text from pg_namespace where nspname = %s", (schema,)
    ).fetchone()
    assert acl is not None
    assert roles.app not in (acl[0] or "")


def test_revoked_or_never_granted_roles_get_a_clear_error(
    worker_app: App, app_app: App, roles: Roles
) -> None:
    app_app.defer("t")
    worker_app.grant_enqueue(roles.app, revoke=True)
    with pytest.raises(PgWorkerError, match=r"may not add jobs .*grant-enqueue"):
        app_app.defer("t")
    worker_app.grant_enqueue(roles.app)
    assert app_app.defer("t").id > 0


def test_the_enqueue_functions_must_be_installed(
    make_app: Callable[..., App], roles: Roles
) -> None:
    with make_app(database_url=roles.worker_url, enqueue_schema="nowhere") as app:
        app.migrate()
        with pytest.raises(PgWorkerError, match=r"'nowhere' are not installed.*grant-enqueue"):
            app.defer("t")


def test_granting_needs_the_owner_a_migrated_schema_a_role_and_a_schema_apart(
    worker_app: App, app_app: App, make_app: Callable[..., App], roles: Roles, schema: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"connect as '{roles.worker}'"):
        app_app.grant_enqueue(roles.app)
    other = make_app(database_url=roles.worker_url, schema=f"{schema}_none")
    with other, pytest.raises(MigrationError, match="not installed"):
        other.grant_enqueue(roles.app)
    with pytest.raises(ConfigurationError, match="does not exist"):
        worker_app.grant_enqueue("pgw_no_such_role")
    with pytest.raises(ConfigurationError, match="can't live in the worker schema"):
        worker_app.grant_enqueue(roles.app, enqueue_schema=schema)


def test_the_cli_grants_and_defers_as_the_app_role(
    worker_app: App, roles: Roles, schema: str, enqueue_schema: str
) -> None:
    runner = CliRunner()
    as_worker = ["--schema", schema, "--database-url", roles.worker_url]
    as_app = [
        "--schema",
        schema,
        "--database-url",
        roles.app_url,
        "--enqueue-schema",
        enqueue_schema,
    ]
    revoked = runner.invoke(cli, ["grant-enqueue", roles.app, "--revoke", *as_worker])
    assert revoked.exit_code == 0, revoked.output
    assert "may no longer add" in revoked.output
    denied = runner.invoke(cli, ["defer", "t", *as_app])
    assert denied.exit_code == 1
    assert "may not add jobs" in denied.output
    granted = runner.invoke(cli, ["grant-enqueue", roles.app, *as_worker])
    assert granted.exit_code == 0, granted.output
    assert f"{enqueue_schema}.add_job" in granted.output
    added = runner.invoke(cli, ["defer", "t", '{"a": 1}', *as_app])
    assert added.exit_code == 0, added.output
    assert worker_app.admin.payload(json.loads(added.stdout)["id"]) == {"a": 1}


def test_the_permissions_example(example_database: str) -> None:
    proc = run_example("permissions", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "the web role may not read jobs: permission denied" in output
    assert "nor call graphile_worker.add_job: permission denied" in output
    assert "ran order 1 for ada@example.com" in output
    assert "ran order 2 for alan@example.com" in output
    assert "roles dropped" in output
