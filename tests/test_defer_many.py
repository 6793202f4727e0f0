"""``Task.defer_many``: a batch of one task with one set of options goes to the database
as one JSON array of payloads, checked in one go; whatever that check can't settle
falls back to the job-by-job path, with its errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import pytest

from pgworker import App, PayloadError, RawJob
from pgworker.job import Job
from pgworker.store import Store

Conn = psycopg.Connection[tuple[Any, ...]]


class Reading(msgspec.Struct, forbid_unknown_fields=True):
    sensor: str
    value: float | None = None


def stored_payloads(db: Conn, schema: str) -> list[str]:
    rows = db.execute(f'select payload::text from "{schema}"._private_jobs order by id')
    return [row[0] for row in rows]


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store methods each defer_many took: insert_uniform (one array) or
    insert_jobs (job by job)."""
    taken: list[str] = []
    for name in ("insert_uniform", "insert_jobs"):
        method: Callable[..., list[Job]] = getattr(Store, name)

        def spy(*args: Any, _method: Callable[..., list[Job]] = method, _name: str = name,
                **kwargs: Any) -> list[Job]:  # fmt: skip
            taken.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(Store, name, spy)
    return taken


def test_one_array_stores_what_defer_stores(
    opened: App, db: Conn, schema: str, routes: list[str]
) -> None:
    @opened.task("read")
    def read(payload: Reading) -> None: ...

    batch = [Reading("a", 1.5), {"sensor": 'é"\\'}, Reading("c", 1e300)]
    jobs = read.defer_many(batch, priority=3, queue="sensors")
    assert routes == ["insert_uniform"]
    for payload in batch:
        read.defer(payload, priority=3, queue="sensors")
    texts = stored_payloads(db, schema)
    assert texts[:3] == texts[3:]
    assert [(j.task_identifier, j.queue_name, j.priority) for j in jobs] == [
        ("read", "sensors", 3)
    ] * 3
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)


def test_a_bad_payload_is_named_and_nothing_is_written(
    opened: App, db: Conn, schema: str, routes: list[str]
) -> None:
    @opened.task("read")
    def read(payload: Reading) -> None: ...

    with pytest.raises(PayloadError, match="does not match Reading") as caught:
        read.defer_many([Reading("a"), {"sensor": 5}, Reading("c")])
    assert caught.value.path == "$.sensor"
    with pytest.raises(PayloadError, match=r"holds nan at `\$\.value`"):
        read.defer_many([Reading("a"), Reading("b", float("nan"))])
    assert stored_payloads(db, schema) == []
    assert routes == []


def test_real_nulls_stay_in_the_array_and_a_trace_key_goes_job_by_job(
    opened: App, db: Conn, schema: str, routes: list[str]
) -> None:
    """A null in the JSON may be a NaN: a batch whose nulls are all Nones inside its
    payloads stays on the one-array path; a ``_trace`` key (left out before the check)
    sends the batch the slow way, which accepts it."""

    @opened.task("read")
    def read(payload: Reading) -> None: ...

    @opened.task("untyped")
    def untyped(payload: Any) -> None: ...

    read.defer_many([Reading("a"), Reading("b", None)])
    untyped.defer_many([{"x": None}, msgspec.Raw(b'{"y":null}')])
    read.defer_many([{"sensor": "c", "_trace": {"traceparent": "00-x"}}])
    assert routes == ["insert_uniform", "insert_uniform", "insert_jobs"]
    assert stored_payloads(db, schema) == [
        '{"sensor":"a","value":null}',
        '{"sensor":"b","value":null}',
        '{"x":null}',
        '{"y":null}',
        '{"sensor":"c","_trace":{"traceparent":"00-x"}}',
    ]


def test_a_null_payload_or_a_nan_goes_job_by_job_to_be_refused(
    opened: App, db: Conn, schema: str, routes: list[str]
) -> None:
    @opened.task("untyped")
    def untyped(payload: Any) -> None: ...

    for batch in ([{"x": 1}, None], [{"x": 1}, msgspec.Raw(b"null")]):
        with pytest.raises(PayloadError, match="a batch can't carry a null payload"):
            untyped.defer_many(batch)
    with pytest.raises(PayloadError, match=r"holds inf at `\$\.x`"):
        untyped.defer_many([{"x": None}, {"x": float("inf")}])
    assert stored_payloads(db, schema) == []
    assert routes == []


def test_the_size_limit_is_each_payload_s(
    make_app: Callable[..., App], db: Conn, schema: str, routes: list[str]
) -> None:
    with make_app(max_payload_bytes=40) as app:
        app.migrate()

        @app.task("read")
        def read(payload: Reading) -> None: ...

        small = [Reading(f"sensor {n}", 1.0) for n in range(5)]
        assert len(msgspec.json.encode(small)) > 40
        assert len(read.defer_many(small)) == 5
        with pytest.raises(PayloadError, match="over the limit of 40"):
            read.defer_many([Reading("a"), Reading("x" * 40)])
    assert len(stored_payloads(db, schema)) == 5
    assert routes == ["insert_jobs"]


def test_a_raw_payload_holding_several_values_is_refused(
    opened: App, db: Conn, schema: str
) -> None:
    """A ``msgspec.Raw`` payload goes as written: one that holds two values must not
    become two jobs, nor shift the payloads of the jobs after it."""

    @opened.task("untyped")
    def untyped(payload: Any) -> None: ...

    with pytest.raises(PayloadError, match="payloads hold 2 JSON values"):
        untyped.defer_many([msgspec.Raw(b"1,2")])
    with pytest.raises(PayloadError, match="payloads hold 3 JSON values"):
        opened.defer_raw(
            [RawJob("a", msgspec.Raw(b"1,2"), priority=1), RawJob("b", {"x": 1}, priority=2)]
        )
    assert stored_payloads(db, schema) == []
    untyped.defer_many([msgspec.Raw(b'{"kept": [1, 2]}')])
    assert stored_payloads(db, schema) == ['{"kept": [1, 2]}']
