"""Deferring jobs: payload types, options, transactions, and the errors users meet."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import msgspec
import psycopg
import pytest

from pgworker import (
    App,
    ConfigurationError,
    JobContext,
    PayloadError,
    PgWorkerError,
    RawJob,
)

Conn = psycopg.Connection[tuple[Any, ...]]


class SayHello(msgspec.Struct):
    message: str


@dataclasses.dataclass
class Resize:
    width: int
    height: int = 100


class Email(TypedDict):
    to: str
    subject: str


def count_jobs(db: Conn, schema: str) -> int:
    row = db.execute(f'select count(*) from "{schema}".jobs').fetchone()
    assert row is not None
    return int(row[0])


def payloads(db: Conn, schema: str) -> list[Any]:
    return [r[0] for r in db.execute(f'select payload from "{schema}"._private_jobs order by id')]


@pytest.mark.gw("WU-19")
def test_defer_accepts_a_struct_or_a_dict_of_its_shape(opened: App, db: Conn, schema: str) -> None:
    @opened.task("say_hello")
    def say_hello(payload: SayHello, ctx: JobContext) -> None: ...

    job = say_hello.defer(SayHello(message="hi"))
    say_hello.defer({"message": "later"})
    assert job.task_identifier == "say_hello"
    assert job.attempts == 0
    assert job.max_attempts == 25
    assert job.priority == 0
    assert job.queue_name is None
    assert job.key is None
    assert job.revision == 0
    assert payloads(db, schema) == [{"message": "hi"}, {"message": "later"}]


@pytest.mark.parametrize(
    ("payload_type", "good", "bad", "field"),
    [
        (SayHello, {"message": "x"}, {"message": 3}, "$.message"),
        (Resize, {"width": 5}, {"width": "wide"}, "$.width"),
        (Email, {"to": "a@b.c", "subject": "hi"}, {"to": "a@b.c"}, None),
        (dict[str, int], {"a": 1}, {"a": "one"}, "$[...]"),
    ],
)
def test_a_mismatching_payload_names_the_field_and_writes_nothing(
    opened: App, db: Conn, schema: str, payload_type: Any, good: Any, bad: Any, field: str | None
) -> None:
    def fn(payload: Any) -> None: ...

    fn.__annotations__["payload"] = payload_type
    task = opened.task("typed")(fn)
    task.defer(good)
    with pytest.raises(PayloadError) as caught:
        task.defer(bad)
    assert caught.value.path == field
    assert count_jobs(db, schema) == 1


def test_a_struct_built_with_wrong_field_types_is_caught(
    opened: App, db: Conn, schema: str
) -> None:
    @opened.task("say_hello")
    def say_hello(payload: SayHello) -> None: ...

    with pytest.raises(PayloadError, match=r"\$\.message"):
        say_hello.defer(SayHello(message=42))  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="cannot be encoded"):
        say_hello.defer({"message": object()})
    assert count_jobs(db, schema) == 0


@pytest.mark.gw("ADD-21", "EDGE-01", "EDGE-02")
def test_defer_options_are_stored(opened: App, db: Conn, schema: str) -> None:
    @opened.task("say_hello", queue="default-q", max_attempts=7)
    def say_hello(payload: SayHello) -> None: ...

    run_at = datetime(2203, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    job = say_hello.defer(
        {"message": "later"},
        run_at=run_at,
        priority=-10,
        queue="emails",
        max_attempts=5,
        job_key="hello-1",
        flags=["slow", "big"],
    )
    assert (job.run_at, job.priority, job.queue_name, job.max_attempts, job.key, job.flags) == (
        run_at,
        -10,
        "emails",
        5,
        "hello-1",
        ["big", "slow"],
    )
    defaults = say_hello.defer({"message": "defaults"})
    assert (defaults.queue_name, defaults.max_attempts) == ("default-q", 7)
    row = db.execute(
        f'select flags from "{schema}"._private_jobs where id = %s', (job.id,)
    ).fetchone()
    assert row == ({"slow": True, "big": True},)


@pytest.mark.gw("ADD-07")
def test_same_key_replaces_the_pending_job(opened: App, db: Conn, schema: str) -> None:
    for a in range(1, 5):
        job = opened.defer("job3", {"a": a}, job_key="UNIQUE")
    assert job.revision == 3
    assert payloads(db, schema) == [{"a": 4}]


@pytest.mark.gw("ADD-03", "ADD-04")
def test_app_defer_by_identifier_needs_no_task(opened: App, db: Conn, schema: str) -> None:
    job = opened.defer("elsewhere", {"raw": [1, 2]}, queue="q")
    empty = opened.defer("elsewhere")
    assert job.task_identifier == "elsewhere"
    assert job.queue_name == "q"
    assert payloads(db, schema) == [{"raw": [1, 2]}, {}]
    assert empty.id > job.id


def test_app_defer_checks_registered_tasks_payloads(opened: App) -> None:
    @opened.task("say_hello")
    def say_hello(payload: SayHello) -> None: ...

    with pytest.raises(PayloadError):
        opened.defer("say_hello", {"message": 1})


@pytest.mark.gw("ADD-22")
def test_defer_in_the_callers_transaction(
    app: App, db: Conn, schema: str, database_url: str
) -> None:
    with app:
        app.migrate()

    @app.task("say_hello")
    def say_hello(payload: SayHello) -> None: ...

    # The app is closed: a caller's connection is all defer needs.
    with psycopg.connect(database_url) as conn:
        with conn.transaction(force_rollback=True):
            say_hello.defer({"message": "rolled back"}, conn=conn)
            assert count_jobs(db, schema) == 0  # not visible outside yet
        assert count_jobs(db, schema) == 0
        with conn.transaction():
            job = say_hello.defer({"message": "kept"}, conn=conn)
    assert payloads(db, schema) == [{"message": "kept"}]
    assert job.id > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"priority": "high"},
            r"priority must be an int from -32768 to 32767, got 'high' \(str\)",
        ),
        ({"priority": 40000}, "priority must be an int from -32768 to 32767, got 40000"),
        ({"priority": True}, r"priority must be an int .*got True \(bool\)"),
        ({"run_at": "tomorrow"}, "run_at must be a timezone-aware datetime.*got 'tomorrow'"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at must be a timezone-aware .*has no tzinfo"),
        ({"max_attempts": 0}, "max_attempts must be an int from 1 to 32767, got 0"),
        ({"max_attempts": 2.5}, r"max_attempts must be an int .*got 2.5 \(float\)"),
        ({"queue": "q" * 129}, "queue must be a str of 1 to 128 characters.*129 characters"),
        ({"queue": 7}, r"queue must be a str .*got 7 \(int\)"),
        ({"job_key": ""}, "job_key must be a str of 1 to 512 characters"),
        ({"job_key": 42}, r"job_key must be a str .*got 42 \(int\)"),
        ({"job_key": "k", "job_key_mode": "sometimes"}, "job_key_mode must be one of 'replace'"),
        ({"job_key_mode": "replace"}, "needs a job_key"),
        ({"flags": "slow"}, r"flags must be a list of str, like \['slow'\], got 'slow'"),
        ({"flags": ["slow", 1]}, r"flags must be a list of str, got 1 \(int\) in it"),
    ],
)
def test_bad_options_are_refused_before_anything_is_sent(
    opened: App, db: Conn, schema: str, options: dict[str, Any], message: str
) -> None:
    @opened.task("typed")
    def typed(payload: dict[str, int]) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        opened.defer("job", {}, **options)
    with pytest.raises(ConfigurationError, match=message):
        typed.defer({}, **options)
    with pytest.raises(ConfigurationError, match=message):
        opened.defer_raw([RawJob("job", {}, **options)])
    if "job_key" not in options and "job_key_mode" not in options:
        with pytest.raises(ConfigurationError, match=message):
            typed.defer_many([{}], **options)
    assert count_jobs(db, schema) == 0


def test_a_raw_job_needs_a_task_identifier_of_text() -> None:
    with pytest.raises(ConfigurationError, match=r"task identifier must be a str .*got 12 "):
        RawJob(12)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"1 to 128 characters.*129 characters"):
        RawJob("t" * 129)


def test_defer_before_open_or_migrate_says_what_to_do(app: App) -> None:
    with pytest.raises(PgWorkerError, match="app is not open"):
        app.defer("job", {})
    with app, pytest.raises(PgWorkerError, match="pgworker migrate"):
        app.defer("job", {})


def test_calling_a_task_directly_runs_the_function(app: App) -> None:
    @app.task("add")
    def add(payload: dict[str, int], ctx: JobContext | None = None) -> int:
        return payload["a"] + payload["b"]

    assert add({"a": 1, "b": 2}) == 3
    assert add.identifier == "add"
    assert add.payload_type == dict[str, int]


def test_task_registration_errors(app: App) -> None:
    with pytest.raises(ConfigurationError, match="identifier"):
        app.task("1bad")
    app.task("ok")(lambda payload: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task("ok")
    with pytest.raises(ConfigurationError, match="positional parameters"):
        app.task("too_many")(lambda a, b, c: None)


@pytest.mark.gw("EDGE-01")
def test_run_at_round_trips_to_the_microsecond(opened: App) -> None:
    moment = datetime.now(UTC) + timedelta(days=365 * 180, microseconds=123)
    assert opened.defer("later", run_at=moment).run_at == moment


@pytest.mark.gw("ADD-10")
def test_unsafe_dedupe_returns_the_existing_job_with_its_own_names(opened: App) -> None:
    first = opened.defer("original", {"a": 1}, job_key="k", queue="q1")
    again = opened.defer("other", {"b": 2}, job_key="k", job_key_mode="unsafe_dedupe")
    assert again.id == first.id
    assert (again.task_identifier, again.queue_name, again.revision) == ("original", "q1", 1)


def test_registering_tasks_concurrently_returns_every_id(opened: App) -> None:
    """Regression: one statement inserting and reading back missed rows that another
    transaction committed meanwhile."""
    errors: list[BaseException] = []
    short: list[int] = []

    def register(round_: int) -> None:
        names = [f"task-{round_}-{i}" for i in range(5)]
        try:
            found = opened.store.register_tasks(names)
        except BaseException as exc:
            errors.append(exc)
        else:
            if len(found) != 5:
                short.append(len(found))

    for round_ in range(25):
        threads = [threading.Thread(target=register, args=(round_,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert errors == []
    assert short == []


def test_a_broken_payload_with_trace_is_still_a_payload_error() -> None:
    from pgworker.payload import PayloadCodec

    with pytest.raises(PayloadError):
        PayloadCodec(dict[str, int]).decode('{"_trace": ')


class Reading(msgspec.Struct):
    sensor: str
    score: float | None
    history: list[float] = []


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"score": float("nan")}, "$.score"),
        ({"score": None, "history": [1.0, float("inf")]}, "$.history[1]"),
        ({"nested": {"deep": [{"x": float("-inf")}]}}, "$.nested.deep[0].x"),
    ],
)
def test_a_nan_or_infinity_is_refused_not_stored_as_null(
    opened: App, db: Conn, schema: str, payload: dict[str, Any], path: str
) -> None:
    with pytest.raises(PayloadError, match="JSON has no NaN or infinity") as caught:
        opened.defer("untyped", payload)
    assert caught.value.path == path
    assert f"at `{path}`" in str(caught.value)
    with pytest.raises(PayloadError) as caught:
        opened.defer_raw([RawJob("untyped", payload)])
    assert caught.value.path == path
    assert count_jobs(db, schema) == 0


def test_a_raw_payload_with_a_null_is_stored_as_written(opened: App, db: Conn, schema: str) -> None:
    """A msgspec.Raw is JSON text already: its nulls are real ones, not NaNs to look for."""
    opened.defer("untyped", {"raw": msgspec.Raw(b'{"a": null}')})
    assert payloads(db, schema) == [{"raw": {"a": None}}]


def test_a_nan_in_a_typed_payload_names_its_field(opened: App, db: Conn, schema: str) -> None:
    @opened.task("reading")
    def reading(payload: Reading) -> None: ...

    with pytest.raises(PayloadError, match=r"holds nan at `\$\.score`"):
        reading.defer(Reading("a", float("nan")))
    with pytest.raises(PayloadError, match=r"holds inf at `\$\.history\[2\]`"):
        reading.defer_many([Reading("a", 1.0), Reading("b", None, [0.0, 1.5, float("inf")])])
    assert count_jobs(db, schema) == 0
    reading.defer(Reading("a", None, [0.5]))  # a real null is fine
    assert payloads(db, schema) == [{"sensor": "a", "score": None, "history": [0.5]}]
