"""OpenTelemetry: defer and run spans join across processes through ``_trace``, in the
Rust crate's shape, and only object payloads are touched."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from pgworker import App, ConfigurationError, Job, Plugin, Skip
from pgworker.hooks import BeforeRun
from pgworker.otel import OpenTelemetryPlugin, parse_trace_info, trace_info

ROOT = Path(__file__).resolve().parent.parent
Conn = psycopg.Connection[tuple[Any, ...]]

# The Rust crate's own test values (crates/graphile-worker-queries/src/telemetry.rs).
RUST_TRACE = {
    "flags": 1,
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "span_id": "00f067aa0ba902b7",
}


class Tracing:
    """A tracer provider of its own, exporting to memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def plugin(self, **options: Any) -> OpenTelemetryPlugin:
        return OpenTelemetryPlugin(tracer_provider=self.provider, **options)

    def spans(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if kind is None or s.kind == kind]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    tracing = Tracing()
    yield tracing
    tracing.provider.shutdown()


def stored_payloads(db: Conn, schema: str) -> list[Any]:
    return [r[0] for r in db.execute(f'select payload from "{schema}"._private_jobs order by id')]


def ctx(span: ReadableSpan) -> SpanContext:
    assert span.context is not None
    return span.context


def assert_rust_shape(value: Any) -> None:
    assert isinstance(value, dict)
    assert list(value) == ["flags", "trace_id", "span_id"]  # serde's field order
    assert isinstance(value["flags"], int)
    assert re.fullmatch(r"[0-9a-f]{32}", value["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", value["span_id"])


DEFER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from pgworker import App
    from pgworker.otel import OpenTelemetryPlugin

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App(database_url=sys.argv[1], schema=sys.argv[2],
              plugins=[OpenTelemetryPlugin(tracer_provider=provider)])
    with app, provider.get_tracer("web").start_as_current_span("POST /signup"):
        job = app.defer("send_email", {"to": "ada@example.com"}, queue="mail")
    print(json.dumps({
        "job_id": job.id,
        "spans": [
            {
                "name": s.name,
                "kind": s.kind.name,
                "trace_id": s.context.trace_id,
                "span_id": s.context.span_id,
                "flags": int(s.context.trace_flags),
                "parent_span_id": s.parent.span_id if s.parent else None,
                "attributes": dict(s.attributes),
            }
            for s in exporter.get_finished_spans()
        ],
    }))
    """
)


def test_a_defer_in_one_process_parents_the_run_in_another(
    make_app: Callable[..., App], opened: App, database_url: str, schema: str, tracing: Tracing
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", DEFER_SCRIPT, database_url, schema],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    deferred = json.loads(done.stdout)
    spans = {s["name"]: s for s in deferred["spans"]}
    request, send = spans["POST /signup"], spans["send send_email"]
    assert send["kind"] == "PRODUCER"
    assert send["trace_id"] == request["trace_id"]
    assert send["parent_span_id"] == request["span_id"]  # the defer joins the caller's trace
    assert send["attributes"] == {
        "messaging.system": "graphile-worker",
        "messaging.operation.type": "send",
        "messaging.operation.name": "add_job",
        "messaging.destination.name": "send_email",
        "graphile_worker.task_identifier": "send_email",
        "graphile_worker.job.queue_name": "mail",
    }

    payload = opened.admin.payload(deferred["job_id"])
    assert payload["to"] == "ada@example.com"
    assert_rust_shape(payload["_trace"])
    assert payload["_trace"]["flags"] & 1  # sampled (newer SDKs add 2, "random trace id")
    assert payload["_trace"] == {
        "flags": send["flags"],
        "trace_id": format(send["trace_id"], "032x"),
        "span_id": format(send["span_id"], "016x"),
    }

    seen: list[SpanContext] = []
    worker = make_app(plugins=[tracing.plugin()])

    @worker.task("send_email")
    def send_email(payload: dict[str, Any]) -> None:
        seen.append(trace.get_current_span().get_span_context())

    worker.run_once()
    (run,) = tracing.spans(SpanKind.CONSUMER)
    assert run.name == "process send_email"
    assert ctx(run).trace_id == send["trace_id"]
    assert run.parent is not None
    assert run.parent.span_id == send["span_id"]
    assert run.parent.is_remote
    assert run.status.status_code == StatusCode.UNSET
    assert run.attributes is not None
    assert dict(run.attributes) == {
        "messaging.system": "graphile-worker",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run_job",
        "messaging.destination.name": "send_email",
        "messaging.message.id": str(deferred["job_id"]),
        "messaging.client.id": run.attributes["messaging.client.id"],
        "graphile_worker.job.id": deferred["job_id"],
        "graphile_worker.task_identifier": "send_email",
        "graphile_worker.job.attempt": 1,
        "graphile_worker.job.max_attempts": 25,
        "graphile_worker.job.priority": 0,
        "graphile_worker.job.queue_name": "mail",
    }
    assert str(run.attributes["messaging.client.id"]).startswith("pgworker-")
    assert seen == [ctx(run)]  # the run span is current while the task runs


def test_a_failed_run_is_an_error_span_and_each_attempt_has_one(
    make_app: Callable[..., App], db: Conn, schema: str, tracing: Tracing
) -> None:
    app = make_app(plugins=[tracing.plugin()])

    @app.task("flaky")
    def flaky(payload: dict[str, Any]) -> None:
        raise ValueError("no luck")

    with app:
        app.migrate()
        job = app.defer("flaky", {"n": 1}, max_attempts=2)
        app.run_once()
        db.execute(f'update "{schema}"._private_jobs set run_at = now()')  # retry now
        app.run_once()
    (send,) = tracing.spans(SpanKind.PRODUCER)
    runs = tracing.spans(SpanKind.CONSUMER)
    assert [r.attributes["graphile_worker.job.attempt"] for r in runs if r.attributes] == [1, 2]
    for run, will_retry in zip(runs, [True, False], strict=True):
        assert run.parent is not None
        assert run.parent.span_id == ctx(send).span_id
        assert ctx(run).trace_id == ctx(send).trace_id
        assert run.status.status_code == StatusCode.ERROR
        assert run.status.description == "ValueError: no luck"
        assert run.attributes is not None
        assert run.attributes["error.type"] == "ValueError"
        assert run.attributes["graphile_worker.job.will_retry"] is will_retry
        assert run.attributes["messaging.message.id"] == str(job.id)
        assert [e.name for e in run.events] == ["exception"]
        assert run.end_time is not None
        assert run.start_time is not None
        assert run.end_time >= run.start_time


class SkipMarked(Plugin):
    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        return Skip() if payload.get("skip") else None


class CurrentSpanProbe(Plugin):
    """Records, on the executor thread, whether a span is current before a job runs."""

    def __init__(self) -> None:
        self.current: list[bool] = []

    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        self.current.append(trace.get_current_span().get_span_context().is_valid)
        return None


def test_a_run_span_is_current_only_while_its_task_runs(
    make_app: Callable[..., App], tracing: Tracing
) -> None:
    probe = CurrentSpanProbe()
    app = make_app(plugins=[probe, tracing.plugin(), SkipMarked()], concurrency=1)
    inside: list[SpanContext] = []

    @app.task("work")
    def work(payload: dict[str, Any]) -> None:
        inside.append(trace.get_current_span().get_span_context())

    with app:
        app.migrate()
        for payload in ({"skip": True}, {"n": 1}, {"n": 2}):
            app.defer("work", payload)
        app.run_once()
    runs = tracing.spans(SpanKind.CONSUMER)
    assert len(runs) == 3  # the skipped run's span ended too
    assert all(r.status.status_code == StatusCode.UNSET for r in runs)
    assert inside == [ctx(r) for r in runs[1:]]
    # One executor thread: no run's context outlives it into the next job.
    assert probe.current == [False, False, False]


def test_a_trace_written_by_the_rust_crate_is_continued(
    make_app: Callable[..., App], tracing: Tracing
) -> None:
    """Rust writes ``_trace`` into object payloads and into the object items of arrays;
    a run continues the first and links the others."""
    other = {
        "flags": 0,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }
    producer = make_app()  # defers as a Rust producer would: the payload already has _trace
    worker = make_app(plugins=[tracing.plugin()])

    @worker.task("from_rust")
    def from_rust(payload: Any) -> None:
        pass

    with producer:
        producer.migrate()
        producer.defer("from_rust", {"user_id": 42, "_trace": RUST_TRACE}, priority=1)
        producer.defer(
            "from_rust",
            [{"n": 1, "_trace": RUST_TRACE}, "x", {"n": 2, "_trace": other}],
            priority=2,
        )
        malformed = {"flags": 1, "trace_id": "zz", "span_id": "1"}
        producer.defer("from_rust", {"_trace": malformed}, priority=3)
    worker.run_once()
    runs = {
        run.attributes["graphile_worker.job.priority"]: run
        for run in tracing.spans(SpanKind.CONSUMER)
        if run.attributes
    }
    for run in (runs[1], runs[2]):
        assert ctx(run).trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
        assert run.parent is not None
        assert run.parent.span_id == 0x00F067AA0BA902B7
    assert not runs[1].links
    assert [link.context.span_id for link in runs[2].links] == [0xB7AD6B7169203331]
    assert runs[3].parent is None  # malformed: ignored, a new trace


def test_only_object_payloads_get_a_trace(
    make_app: Callable[..., App], db: Conn, schema: str, tracing: Tracing
) -> None:
    app = make_app(plugins=[tracing.plugin()])
    given = {"a": 1}
    with app:
        app.migrate()
        app.defer("raw", given)
        for payload in ([1, {"b": 2}], "text", 7, True):
            app.defer("raw", payload)
    assert given == {"a": 1}  # the caller's dict is not changed
    first, *others = stored_payloads(db, schema)
    assert first.pop("_trace") is not None
    assert first == {"a": 1}
    assert others == [[1, {"b": 2}], "text", 7, True]
    assert len(tracing.spans(SpanKind.PRODUCER)) == 5  # every defer has its span


class Greeting(msgspec.Struct):
    name: str


class StrictGreeting(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@dataclasses.dataclass
class Parcel:
    weight: int


def test_structs_and_dataclasses_are_deferred_as_objects_with_a_trace(
    make_app: Callable[..., App], db: Conn, schema: str, tracing: Tracing
) -> None:
    app = make_app(plugins=[tracing.plugin(untraced_payload_tasks=["untraced"])], concurrency=1)
    received: list[Any] = []

    @app.task("greet")
    def greet(payload: Greeting) -> None:
        received.append(payload)

    @app.task("strict")
    def strict(payload: StrictGreeting) -> None:
        received.append(payload)

    @app.task("ship")
    def ship(payload: Parcel) -> None:
        received.append(payload)

    @app.task("untraced")
    def untraced(payload: dict[str, int]) -> None:
        received.append(payload)

    with app:
        app.migrate()
        greet.defer(Greeting("Ada"))
        strict.defer(StrictGreeting("Grace"))  # would refuse _trace: deferred without it
        ship.defer(Parcel(3))
        untraced.defer({"n": 1})  # dict[str, int] would refuse _trace
        greeted, strict_payload, shipped, plain = stored_payloads(db, schema)
        assert_rust_shape(greeted.pop("_trace"))
        assert_rust_shape(shipped.pop("_trace"))
        assert (greeted, strict_payload, shipped, plain) == (
            {"name": "Ada"},
            {"name": "Grace"},
            {"weight": 3},
            {"n": 1},
        )
        app.run_once()
    assert received == [Greeting("Ada"), StrictGreeting("Grace"), Parcel(3), {"n": 1}]
    assert len(tracing.spans(SpanKind.CONSUMER)) == 4


def test_trace_info_round_trips() -> None:
    span_context = parse_trace_info(RUST_TRACE)
    assert span_context is not None
    assert trace_info(span_context) == RUST_TRACE
    for bad in (None, [], {"trace_id": "1", "span_id": "1"}, {**RUST_TRACE, "flags": True}):
        assert parse_trace_info(bad) is None
    assert parse_trace_info({**RUST_TRACE, "trace_id": "0" * 32}) is None


def test_without_opentelemetry_the_plugin_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pgworker

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "pgworker.otel")
    monkeypatch.setattr(pgworker, "otel", pgworker.otel, raising=False)
    fresh = importlib.import_module("pgworker.otel")
    with pytest.raises(ConfigurationError, match=re.escape("pip install opentelemetry-api")):
        fresh.OpenTelemetryPlugin()
