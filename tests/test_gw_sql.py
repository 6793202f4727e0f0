"""graphile-worker's SQL functions and the jobs view, called as a trigger or a Node
worker would call them, on pgworker's schema (behaviour ids in tests/behaviours.toml)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgworker import App, ConfigurationError

Conn = psycopg.Connection[tuple[Any, ...]]


def now(db: Conn) -> datetime:
    row = db.execute("select now()").fetchone()  # autocommit: the time of this statement
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def job(db: Conn, schema: str, job_id: int) -> dict[str, Any]:
    cursor = db.execute(f'select * from "{schema}".jobs where id = %s', (job_id,))
    names = [c.name for c in cursor.description or []]
    row = cursor.fetchone()
    assert row is not None
    payload = db.execute(
        f'select payload from "{schema}"._private_jobs where id = %s', (job_id,)
    ).fetchone()
    assert payload is not None
    return {**dict(zip(names, row, strict=True)), "payload": payload[0]}


def add_job(db: Conn, schema: str, arguments: str, params: tuple[Any, ...] = ()) -> int:
    row = db.execute(f'select id from "{schema}".add_job({arguments})', params).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.gw("ADD-01", "ADD-02", "ADD-03")
def test_add_job_takes_a_queue_by_name_or_position_and_defaults_the_payload(
    opened: App, db: Conn, schema: str
) -> None:
    before = now(db)
    queued = add_job(db, schema, "'job3', '{\"a\": 1}', queue_name := 'myqueue'")
    after = now(db)
    row = job(db, schema, queued)
    assert before <= row["run_at"] <= after
    assert (row["queue_name"], row["payload"], row["attempts"]) == ("myqueue", {"a": 1}, 0)
    queues = db.execute(
        f'select queue_name, locked_at, locked_by from "{schema}"._private_job_queues'
    ).fetchall()
    assert queues == [("myqueue", None, None)]
    in_queue = db.execute(
        f"select count(*) from \"{schema}\".jobs where queue_name = 'myqueue'"
    ).fetchone()
    assert in_queue == (1,)

    positional = add_job(db, schema, "'job3', '{}', 'serial'")
    assert job(db, schema, positional)["queue_name"] == "serial"
    bare = add_job(db, schema, "'job3'")
    assert (job(db, schema, bare)["payload"], job(db, schema, bare)["queue_name"]) == ({}, None)


@pytest.mark.gw("ADD-17", "ADD-18")
def test_a_keyed_add_job_resets_the_job_then_retargets_it(
    opened: App, db: Conn, schema: str
) -> None:
    first = add_job(
        db,
        schema,
        "'job3', '{\"a\": 1}', queue_name := 'queue1', run_at := now() + interval '1 hour', "
        "max_attempts := 10, job_key := 'abc'",
    )
    db.execute(
        f"update \"{schema}\"._private_jobs set attempts = 1, last_error = 'boom' where id = %s",
        (first,),
    )
    before = now(db)
    reset = add_job(db, schema, "'job3', job_key := 'abc'")
    row = job(db, schema, reset)
    assert reset == first
    assert (row["attempts"], row["max_attempts"], row["payload"]) == (0, 25, {})
    assert (row["queue_name"], row["last_error"], row["key"]) == (None, None, "abc")
    assert row["run_at"] >= before

    when = datetime(2201, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    moved = add_job(
        db,
        schema,
        "'job2', '{\"a\": 2}', queue_name := 'queue2', run_at := %s, max_attempts := 100, "
        "job_key := 'abc'",
        (when,),
    )
    row = job(db, schema, moved)
    assert moved == first
    assert (row["task_identifier"], row["queue_name"], row["max_attempts"]) == (
        "job2",
        "queue2",
        100,
    )
    assert (row["run_at"], row["payload"]) == (when, {"a": 2})


@pytest.mark.gw("AJ-09")
def test_add_jobs_takes_a_json_recordset_of_specs(opened: App, db: Conn, schema: str) -> None:
    specs = [
        {
            "identifier": "job3",
            "payload": {"n": n},
            "queue_name": f"q{n}",
            "run_at": f"220{n}-01-0{n}T00:00:00Z",
        }
        for n in (1, 2, 3)
    ]
    rows = db.execute(
        f'select id from "{schema}".add_jobs(array(select json_populate_recordset('
        f'null::"{schema}".job_spec, %s::json)))',
        (json.dumps(specs),),
    ).fetchall()
    assert len(rows) == 3
    stored = db.execute(
        f'select queue_name, run_at from "{schema}".jobs order by queue_name'
    ).fetchall()
    assert stored == [(f"q{n}", datetime(2200 + n, 1, n, tzinfo=UTC)) for n in (1, 2, 3)]


@pytest.mark.gw("EDGE-03", "EDGE-04")
def test_one_statement_calling_add_job_per_row_makes_a_job_per_row(
    opened: App, db: Conn, schema: str
) -> None:
    db.execute(
        f"select \"{schema}\".add_job('job3', json_build_object('id', i::text), "
        "queue_name := 'queue_' || i) from generate_series(1, 5) as i"
    )
    rows = db.execute(
        f'select j.payload, q.queue_name from "{schema}"._private_jobs as j '
        f'join "{schema}"._private_job_queues as q on q.id = j.job_queue_id order by j.id'
    ).fetchall()
    assert rows == [({"id": str(i)}, f"queue_{i}") for i in range(1, 6)]


@pytest.mark.gw("MIG-14")
def test_the_jobs_view_is_the_private_row_with_task_and_queue_names(
    opened: App, selection: dict[str, int], db: Conn, schema: str
) -> None:
    view = db.execute(f'select * from "{schema}".jobs order by id')
    columns = [c.name for c in view.description or []]
    from_view = [dict(zip(columns, row, strict=True)) for row in view.fetchall()]
    private = db.execute(
        f"""select jobs.*, tasks.identifier as task_identifier, queues.queue_name
        from "{schema}"._private_jobs as jobs
        join "{schema}"._private_tasks as tasks on tasks.id = jobs.task_id
        left join "{schema}"._private_job_queues as queues on queues.id = jobs.job_queue_id
        order by jobs.id"""
    )
    private_columns = [c.name for c in private.description or []]
    hidden = {"payload", "is_available", "job_queue_id", "task_id"}
    assert set(columns) == (set(private_columns) - hidden)
    expected = [
        {name: value for name, value in zip(private_columns, row, strict=True) if name in columns}
        for row in private.fetchall()
    ]
    assert from_view == expected
    assert len(from_view) == len(selection)
    assert any(row["queue_name"] is None for row in from_view)
    assert any(row["locked_by"] is not None for row in from_view)


NAMES_NEEDING_CARE = [
    "plain",
    "schema",
    "MixedCase",
    "with-dash",
    "1leading_digit",
    'embedded"quote',
    "select",
    "between",
    "schéma_ünïcode",
]


@pytest.mark.gw("MIG-17")
def test_schema_names_are_escaped_to_what_format_i_names(db: Conn) -> None:
    with pytest.raises(ConfigurationError, match="schema must be 1 to 63 characters"):
        App(schema="")
    for name in NAMES_NEEDING_CARE:
        App(schema=name)  # accepted
        escaped = sql.Identifier(name).as_string(db)  # how pgworker writes its schema
        db.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
        try:
            row = db.execute(
                "select to_regnamespace(format('%%I', %s::text)) = to_regnamespace(%s)",
                (name, escaped),
            ).fetchone()
            assert row == (True,), (name, escaped)
        finally:
            db.execute(sql.SQL("drop schema {}").format(sql.Identifier(name)))
