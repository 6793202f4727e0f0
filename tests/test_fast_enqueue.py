"""The set-based enqueue of a keyless batch writes exactly what graphile-worker's add_jobs
writes: the same job, task and queue rows, the same notification, the same Jobs back."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from pgworker import App, RawJob
from pgworker.errors import DatabaseError
from pgworker.job import Job
from pgworker.spec import JobSpec
from pgworker.store import NewJob, Store

Conn = psycopg.Connection[tuple[Any, ...]]
#: Adds a batch on a connection in a transaction: the function path or the fast path.
Adder = Callable[[Store, list[NewJob], Conn], list[Job]]

SENTINEL = "test_fast_enqueue:done"
NOTIFY_TIMEOUT = 10.0
LATER = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
ELSEWHERE = datetime(2029, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-7, minutes=-30)))


def through_function(store: Store, jobs: list[NewJob], conn: Conn) -> list[Job]:
    return store.call_add_jobs(jobs, preserve_run_at=False, conn=conn)


def set_based(store: Store, jobs: list[NewJob], conn: Conn) -> list[Job]:
    return store.insert_jobs(jobs, conn=conn)


def uniform(store: Store, jobs: list[NewJob], conn: Conn) -> list[Job]:
    """The path of ``defer_many``: one task, one set of options, one JSON array."""
    first = jobs[0]
    assert all((new.identifier, new.spec) == (first.identifier, first.spec) for new in jobs)
    payloads = "[" + ",".join(new.payload for new in jobs) + "]"
    return store.insert_uniform(first.identifier, first.spec, payloads, len(jobs), conn=conn)


def varied_batch() -> list[NewJob]:
    """Mixed tasks (new and existing), queues (none, new, existing), every option set and
    unset, and payloads of every JSON shape, whitespace and escapes included."""
    payloads = [
        "{}",
        '{"n":1}',
        "[1,2,3]",
        '"a string"',
        "42",
        "true",
        "null",
        '{"nested":{"list":[1,{"y":null}],"f":1.5e3}}',
        '{ "spaced" :  [ 1 , 2 ] }',
        '{"unicode":"\\u00e9 é ✓","quote":"\\"","slash":"a\\\\b"}',
    ]
    tasks = ["alpha", "existing_task", "gamma:sub/x.y-z"]
    queues = [None, "q_new", "existing_queue", None]
    run_ats = [None, LATER, ELSEWHERE]
    priorities = [None, -5, 0, 32767, -32768]
    max_attempts = [None, 1, 3, 25]
    flags: list[list[str] | None] = [None, [], ["a"], ["b", "a", "a"]]
    return [
        NewJob(
            tasks[i % len(tasks)],
            payloads[i % len(payloads)],
            JobSpec(
                queue=queues[i % len(queues)],
                run_at=run_ats[i % len(run_ats)],
                priority=priorities[i % len(priorities)],
                max_attempts=max_attempts[i % len(max_attempts)],
                flags=flags[i % len(flags)],
            ),
        )
        for i in range(60)
    ]


@pytest.fixture
def two_apps(database_url: str) -> Iterator[tuple[App, App]]:
    """Two migrated schemas, each with a task and a queue that already exist."""
    names = [f"pgw_test_fast_{secrets.token_hex(4)}" for _ in range(2)]
    apps = [App(database_url=database_url, schema=name) for name in names]
    try:
        for app in apps:
            app.open()
            app.migrate()
            with app.store.connection() as conn:
                ident = sql.Identifier(app.schema)
                conn.execute(
                    sql.SQL(
                        "insert into {}._private_tasks (identifier) values ('existing_task')"
                    ).format(ident)
                )
                conn.execute(
                    sql.SQL(
                        "insert into {}._private_job_queues (queue_name) values ('existing_queue')"
                    ).format(ident)
                )
        yield apps[0], apps[1]
    finally:
        for app in apps:
            app.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name))
                )


def write(
    store: Store, add: Adder, jobs: list[NewJob], database_url: str, listener: Conn
) -> tuple[list[Job], datetime, list[dict[str, Any]]]:
    """Add ``jobs`` in a transaction of their own; return the Jobs, the transaction's
    now(), and the jobs:insert notifications it sent (collected up to a sentinel that the
    same session sends after committing, so nothing is waited for by the clock)."""
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            added = add(store, jobs, conn)
            row = conn.execute("select now()").fetchone()
            assert row is not None
        conn.execute("select pg_notify(%s, '')", (SENTINEL,))
        conn.commit()
    seen: list[dict[str, Any]] = []
    for notify in listener.notifies(timeout=NOTIFY_TIMEOUT):
        if notify.channel == SENTINEL:
            return added, row[0], seen
        seen.append(json.loads(notify.payload))
    raise AssertionError(f"no sentinel notification within {NOTIFY_TIMEOUT} s")


def stored(conn: Conn, schema: str, now: datetime) -> dict[str, Any]:
    """Everything a batch wrote in ``schema``, by value: every column of every job row in
    id order (ids replaced by the names they point to, the transaction's now() by "now",
    payloads as their exact text), and the task and queue rows."""
    ident = sql.Identifier(schema)
    jobs = conn.execute(
        sql.SQL(
            "select to_jsonb(jobs) - 'id' - 'task_id' - 'job_queue_id' - 'payload', "
            "tasks.identifier, job_queues.queue_name, jobs.payload::text, "
            "jobs.run_at = %s, jobs.created_at = %s, jobs.updated_at = %s "
            "from {s}._private_jobs as jobs "
            "join {s}._private_tasks as tasks on tasks.id = jobs.task_id "
            "left join {s}._private_job_queues as job_queues on job_queues.id = jobs.job_queue_id "
            "order by jobs.id"
        ).format(s=ident),
        (now, now, now),
    ).fetchall()
    rows = []
    for columns, task, queue, payload, run_at_now, created_now, updated_now in jobs:
        assert created_now, "created_at is the transaction's now()"
        assert updated_now, "updated_at is the transaction's now()"
        columns.update(task=task, queue=queue, payload=payload, created_at="now")
        columns["updated_at"] = "now"
        if run_at_now:
            columns["run_at"] = "now"
        rows.append(columns)
    tasks = conn.execute(
        sql.SQL("select to_jsonb(t) - 'id' from {}._private_tasks as t order by 1").format(ident)
    ).fetchall()
    queues = conn.execute(
        sql.SQL("select to_jsonb(q) - 'id' from {}._private_job_queues as q order by 1").format(
            ident
        )
    ).fetchall()
    return {"jobs": rows, "tasks": tasks, "queues": queues}


def comparable(job: Job, now: datetime) -> dict[str, Any]:
    fields = msgspec.structs.asdict(job)
    del fields["id"]
    for name in ("run_at", "created_at", "updated_at"):
        if fields[name] == now:
            fields[name] = "now"
    return fields


def brand_new_rows(db: Conn, schema: str) -> tuple[int, int, int] | None:
    """How many jobs, and rows for the task 'brand_new' and the queue 'new_queue'."""
    return db.execute(
        sql.SQL(
            "select (select count(*) from {s}._private_jobs), "
            "(select count(*) from {s}._private_tasks where identifier = 'brand_new'), "
            "(select count(*) from {s}._private_job_queues where queue_name = 'new_queue')"
        ).format(s=sql.Identifier(schema))
    ).fetchone()


@pytest.fixture
def listener(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('listen "jobs:insert"')
        conn.execute(sql.SQL("listen {}").format(sql.Identifier(SENTINEL)))
        yield conn


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(varied_batch, id="varied"),
        pytest.param(lambda: [NewJob("alpha", "{}", JobSpec())], id="one"),
        pytest.param(
            lambda: [NewJob("noop", f'{{"n":{i}}}', JobSpec()) for i in range(2500)],
            id="2500-one-task",
        ),
        pytest.param(
            lambda: [
                NewJob("existing_task", "{}", JobSpec(queue="q_new", priority=i % 2, flags=["x"]))
                for i in range(6)
            ],
            id="some-options-shared",
        ),
    ],
)
def test_set_based_insert_writes_what_add_jobs_writes(
    two_apps: tuple[App, App],
    database_url: str,
    db: Conn,
    listener: Conn,
    batch: Callable[[], list[NewJob]],
) -> None:
    results = []
    for app, add in zip(two_apps, (through_function, set_based), strict=True):
        jobs, now, notified = write(app.store, add, batch(), database_url, listener)
        results.append(
            {
                "rows": stored(db, app.schema, now),
                "returned": [comparable(job, now) for job in jobs],
                "ids_in_order": [job.id for job in jobs] == sorted(job.id for job in jobs),
                "notified": [(sorted(n), n["count"]) for n in notified],
            }
        )
    by_function, fast = results
    assert fast["rows"]["jobs"], "the batch wrote jobs"
    assert fast["rows"] == by_function["rows"]
    assert fast["returned"] == by_function["returned"]
    # The returned Jobs are the stored rows, in the order of the batch.
    assert fast["ids_in_order"]
    assert by_function["ids_in_order"]
    assert len(fast["returned"]) == len(batch())
    assert fast["notified"] == by_function["notified"] == [(["count", "r"], len(batch()))]


UNIFORM_SPECS = [
    JobSpec(),
    JobSpec(queue="q_new", run_at=ELSEWHERE, priority=-3, max_attempts=2, flags=["b", "a"]),
    JobSpec(queue="existing_queue", run_at=LATER),
]


@pytest.mark.parametrize("spec", UNIFORM_SPECS, ids=["defaults", "every-option", "existing"])
def test_a_uniform_batch_writes_what_add_jobs_writes(
    two_apps: tuple[App, App], database_url: str, db: Conn, listener: Conn, spec: JobSpec
) -> None:
    payloads = ['{"n":1}', "[1,2]", '"text"', '{ "spaced" :  [ 1 , 2 ] }', '{"é":"\\u00e9\\""}']
    batch = [NewJob("alpha", payload, spec) for payload in payloads]
    results = []
    for app, add in zip(two_apps, (through_function, uniform), strict=True):
        jobs, now, notified = write(app.store, add, batch, database_url, listener)
        results.append(
            (stored(db, app.schema, now), [comparable(job, now) for job in jobs], notified)
        )
    (rows, returned, notified), (fast_rows, fast_returned, fast_notified) = results
    assert fast_rows == rows
    assert [row["payload"] for row in fast_rows["jobs"]] == payloads
    assert fast_returned == returned
    assert [n["count"] for n in fast_notified] == [n["count"] for n in notified] == [5]


def test_the_fast_path_names_jobs_and_defaults_like_the_jobs_view(
    two_apps: tuple[App, App], db: Conn
) -> None:
    app = two_apps[1]
    jobs = app.store.insert_jobs(varied_batch())
    view = {
        row[0]: row[1:]
        for row in db.execute(
            sql.SQL(
                "select id, task_identifier, queue_name, priority, max_attempts, flags from {}.jobs"
            ).format(sql.Identifier(app.schema))
        )
    }
    assert len(view) == len(jobs) == 60
    for job in jobs:
        task, queue, priority, max_attempts, flags = view[job.id]
        assert (job.task_identifier, job.queue_name) == (task, queue)
        assert (job.priority, job.max_attempts) == (priority, max_attempts)
        assert job.flags == (sorted(flags) if flags else None)


def test_a_rolled_back_batch_leaves_nothing_and_notifies_nobody(
    two_apps: tuple[App, App], database_url: str, db: Conn, listener: Conn
) -> None:
    app = two_apps[1]
    with psycopg.connect(database_url) as conn:
        app.store.insert_jobs([NewJob("brand_new", "{}", JobSpec(queue="new_queue"))], conn=conn)
        conn.rollback()
        conn.execute("select pg_notify(%s, '')", (SENTINEL,))
        conn.commit()
    notified = [n.channel for n in listener.notifies(timeout=NOTIFY_TIMEOUT, stop_after=1)]
    assert notified == [SENTINEL]
    counts = brand_new_rows(db, app.schema)
    assert counts == (0, 0, 0)


def test_keyed_batches_keep_add_jobs_semantics(two_apps: tuple[App, App], db: Conn) -> None:
    app = two_apps[1]
    first = app.defer_raw([RawJob("batcher", [1], job_key="k"), RawJob("batcher", {"free": True})])
    again = app.defer_raw([RawJob("batcher", [2, 3], job_key="k", priority=4)])
    # One job under the key: replaced (revision 1), array payloads merged, as add_jobs does.
    assert again[0].id == first[0].id
    assert (again[0].revision, again[0].priority) == (1, 4)
    row = db.execute(
        sql.SQL("select payload::text, revision from {}._private_jobs where key = 'k'").format(
            sql.Identifier(app.schema)
        )
    ).fetchone()
    assert row is not None
    assert (json.loads(row[0]), row[1]) == ([1, 2, 3], 1)
    assert (first[1].key, first[1].revision) == (None, 0)


def test_only_keyed_batches_call_add_jobs(two_apps: tuple[App, App], database_url: str) -> None:
    app = two_apps[1]

    @app.task("typed")
    def typed(payload: dict[str, int]) -> None: ...

    def add_jobs_calls(conn: Conn) -> int:
        row = conn.execute(
            "select coalesce(sum(calls), 0) from pg_stat_xact_user_functions "
            "where schemaname = %s and funcname = 'add_jobs'",
            (app.schema,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(database_url) as conn:
        conn.execute("set local track_functions = 'pl'")  # counted for this transaction
        jobs = typed.defer_many([{"n": i} for i in range(5)], queue="q_typed", conn=conn)
        assert [(j.task_identifier, j.queue_name) for j in jobs] == [("typed", "q_typed")] * 5
        assert add_jobs_calls(conn) == 0
        app.defer_raw([RawJob("typed", {"n": 9}, job_key="key")], conn=conn)
        assert add_jobs_calls(conn) == 1


def test_on_an_autocommit_connection_a_failed_batch_writes_and_notifies_nothing(
    two_apps: tuple[App, App], database_url: str, db: Conn, listener: Conn
) -> None:
    # The names, the notification and the rows go in one transaction even where each
    # statement would otherwise commit on its own: a row the server refuses (a payload
    # that is not JSON) takes the names and the notification with it.
    app = two_apps[1]
    batch = [
        NewJob("brand_new", "{}", JobSpec(queue="new_queue")),
        NewJob("brand_new", "{not json", JobSpec()),
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(DatabaseError, match="invalid input syntax for type json"):
            app.store.insert_jobs(batch, conn=conn)
        conn.execute("select pg_notify(%s, '')", (SENTINEL,))
    notified = [n.channel for n in listener.notifies(timeout=NOTIFY_TIMEOUT, stop_after=1)]
    assert notified == [SENTINEL]
    counts = brand_new_rows(db, app.schema)
    assert counts == (0, 0, 0)


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_batch_on_a_connection_in_pipeline_mode_is_added(
    two_apps: tuple[App, App], database_url: str, db: Conn, autocommit: bool
) -> None:
    # A caller's pipeline is joined (PostgreSQL would refuse a COPY there).
    app = two_apps[0]
    with psycopg.connect(database_url, autocommit=autocommit) as conn:
        with conn.pipeline():
            jobs = app.defer_raw([RawJob("alpha", {"n": 1}), RawJob("alpha", {"n": 2})], conn=conn)
        conn.commit()
    assert [job.task_identifier for job in jobs] == ["alpha", "alpha"]
    stored = db.execute(
        sql.SQL("select id, payload from {}._private_jobs order by id").format(
            sql.Identifier(app.schema)
        )
    ).fetchall()
    assert stored == [(jobs[0].id, {"n": 1}), (jobs[1].id, {"n": 2})]
