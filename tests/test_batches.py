"""Batch defers: one statement for many jobs, checked before anything is written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest

from pgworker import App, ConfigurationError, PayloadError, RawJob

Conn = psycopg.Connection[tuple[Any, ...]]


class SendEmail(msgspec.Struct):
    to: str
    subject: str


#: The set-based insert of a batch without keys.
INSERT_JOBS = re.compile(rb"insert into \S+\._private_jobs\s")


class CountingCursor(psycopg.Cursor[tuple[Any, ...]]):
    """Counts the statements sent through it, and those that insert jobs (a call of
    add_jobs, or the set-based insert of a batch without keys)."""

    statements = 0
    inserts = 0

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.statements += 1
        text = bytes(query)
        CountingCursor.inserts += b".add_jobs(" in text or bool(INSERT_JOBS.search(text))
        return super().execute(query, *args, **kwargs)


@pytest.fixture
def counting(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(database_url, autocommit=True, cursor_factory=CountingCursor) as conn:
        CountingCursor.statements = CountingCursor.inserts = 0
        yield conn


@pytest.mark.gw("AJ-01", "AJ-08", "AJ-14")
def test_defer_many_sends_10000_typed_jobs_in_one_statement(
    opened: App, counting: Conn, db: Conn, schema: str
) -> None:
    @opened.task("send_email")
    def send_email(payload: SendEmail) -> None: ...

    emails = [SendEmail(to=f"user{i}@example.com", subject="Hi") for i in range(10_000)]
    jobs = send_email.defer_many(emails, priority=3, conn=counting)
    # One insert of the rows, pipelined behind the statement that makes sure the task has
    # a row.
    assert (CountingCursor.inserts, CountingCursor.statements) == (1, 2)
    assert len(jobs) == 10_000
    assert all(job.task_identifier == "send_email" and job.priority == 3 for job in jobs)
    assert db.execute(f'select count(*) from "{schema}".jobs').fetchone() == (10_000,)
    first = db.execute(
        f'select payload from "{schema}"._private_jobs where id = %s', (jobs[0].id,)
    ).fetchone()
    assert first == ({"to": "user0@example.com", "subject": "Hi"},)


def test_one_bad_payload_in_a_batch_writes_nothing(opened: App, db: Conn, schema: str) -> None:
    @opened.task("send_email")
    def send_email(payload: SendEmail) -> None: ...

    batch: list[Any] = [{"to": "a@b.c", "subject": "ok"}] * 50 + [{"to": "a@b.c"}]
    with pytest.raises(PayloadError, match="subject"):
        send_email.defer_many(batch)
    with pytest.raises(PayloadError):
        opened.defer_raw([RawJob("send_email", {"to": "x", "subject": "y"}), RawJob("send_email")])
    assert db.execute(f'select count(*) from "{schema}".jobs').fetchone() == (0,)


@pytest.mark.gw("AJ-10", "AJ-11", "AJ-14")
def test_defer_raw_mixes_tasks_and_options_in_one_statement(
    opened: App, counting: Conn, db: Conn, schema: str
) -> None:
    jobs = opened.defer_raw(
        [
            RawJob("send_email", {"to": "dave@example.com", "subject": "Notification"}),
            RawJob("process_payment", {"user_id": 123, "amount": 50}, priority=-10),
            RawJob("process_payment", {"user_id": 7, "amount": 5}, queue="payments", priority=1),
        ],
        conn=counting,
    )
    # One insert pipelined behind the statement for the names; the jobs are named from
    # the request, with no lookup by id.
    assert (CountingCursor.inserts, CountingCursor.statements) == (1, 2)
    opened.defer_raw(
        [RawJob("send_email"), RawJob("process_payment", queue="payments")], conn=counting
    )
    assert (CountingCursor.inserts, CountingCursor.statements) == (2, 4)
    assert [(j.task_identifier, j.priority, j.queue_name) for j in jobs] == [
        ("send_email", 0, None),
        ("process_payment", -10, None),
        ("process_payment", 1, "payments"),
    ]
    stored = db.execute(
        f'select task_identifier, priority, queue_name from "{schema}".jobs order by id limit 3'
    ).fetchall()
    assert stored == [(j.task_identifier, j.priority, j.queue_name) for j in jobs]
    assert opened.defer_raw([]) == []


@pytest.mark.gw("AJ-13")
def test_keyed_jobs_in_batches_update_in_place(opened: App, db: Conn, schema: str) -> None:
    opened.defer_raw([RawJob("t", {"a": 1}, job_key="k"), RawJob("t", {"b": 1}), RawJob("t")])
    [updated] = opened.defer_raw([RawJob("t", {"a": 2}, job_key="k")])
    assert updated.revision == 1
    assert db.execute(f'select count(*) from "{schema}".jobs').fetchone() == (3,)
    row = db.execute(f"select payload from \"{schema}\"._private_jobs where key = 'k'").fetchone()
    assert row == ({"a": 2},)


@pytest.mark.gw("AJ-06")
def test_batches_refuse_modes_they_cannot_honour(opened: App) -> None:
    with pytest.raises(ConfigurationError, match="unsafe_dedupe"):
        opened.defer_raw([RawJob("t", job_key="k", job_key_mode="unsafe_dedupe")])
    with pytest.raises(ConfigurationError, match="one job_key_mode"):
        opened.defer_raw(
            [
                RawJob("t", job_key="a", job_key_mode="replace"),
                RawJob("t", job_key="b", job_key_mode="preserve_run_at"),
            ]
        )


def test_null_payloads_are_refused_in_batches_only(opened: App, db: Conn, schema: str) -> None:
    @opened.task("maybe")
    def maybe(payload: int | None) -> None: ...

    maybe.defer(None)  # alone, a null payload is stored as null
    with pytest.raises(PayloadError, match="null payload"):
        maybe.defer_many([3, None])  # add_jobs would turn it into {}
    maybe.defer_many([3])
    stored = db.execute(f'select payload from "{schema}"._private_jobs order by id').fetchall()
    assert stored == [(None,), (3,)]
