"""OpenTelemetry spans per defer and per run, joined through the payload's ``_trace`` key."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import ConfigurationError
from .hooks import AfterRun, BeforeDefer, BeforeRun, JobResult, Plugin, RewritePayload
from .job import Job
from .spec import JobSpec

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        Span,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError:
    _OTEL_MISSING = True
else:
    _OTEL_MISSING = False

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.trace import TracerProvider

    from .hooks import WorkerInfo

#: The payload key carrying the defer span's context, as the Rust crate names it.
TRACE_KEY = "_trace"
#: ``messaging.system`` as the Rust crate reports it, so both languages' spans group.
MESSAGING_SYSTEM = "graphile-worker"
_HEX_TRACE_ID = re.compile(r"^[0-9a-fA-F]{1,32}$")
_HEX_SPAN_ID = re.compile(r"^[0-9a-fA-F]{1,16}$")


def trace_info(span_context: SpanContext) -> dict[str, Any]:
    """The ``_trace`` value for ``span_context``: the Rust crate's ``TraceInfo``,
    ``{"flags": 1, "trace_id": "<32 hex>", "span_id": "<16 hex>"}``."""
    return {
        "flags": int(span_context.trace_flags),
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


def parse_trace_info(value: object) -> SpanContext | None:
    """The remote span context a ``_trace`` value describes, or None when it is missing
    or malformed (which, as in the Rust crate, is ignored)."""
    if _OTEL_MISSING or not isinstance(value, dict):
        return None
    flags, trace_id, span_id = value.get("flags"), value.get("trace_id"), value.get("span_id")
    if not (isinstance(flags, int) and not isinstance(flags, bool) and 0 <= flags <= 0xFF):
        return None
    if not (isinstance(trace_id, str) and _HEX_TRACE_ID.match(trace_id)):
        return None
    if not (isinstance(span_id, str) and _HEX_SPAN_ID.match(span_id)):
        return None
    context = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(flags),
    )
    return context if context.is_valid else None


class OpenTelemetryPlugin(Plugin):
    """Traces jobs from defer to run, across processes and languages.

    Each defer makes a PRODUCER span (``send <task>``), child of whatever span is current,
    and writes its context into the payload's ``_trace`` key in the Rust crate's shape.
    Each run makes a CONSUMER span (``process <task>``) whose parent is the context found
    in ``_trace`` (a new trace when there is none); it is the current span while the task
    runs, so the task's own spans nest under it, and it ends with the job's recorded
    outcome, marked as an error when the job failed. Every attempt gets its own span.

    Only object payloads carry ``_trace``: dicts, and msgspec Structs or dataclasses
    (deferred as their dict form). Arrays and scalars are deferred unchanged. A task whose
    payload type refuses an unknown key (``dict[str, int]``, a Struct with
    ``forbid_unknown_fields``, which is detected) cannot carry it: list such tasks in
    ``untraced_payload_tasks``; they still get spans, and their runs start new traces.

    ``tracer_provider`` defaults to the global one. Needs the OpenTelemetry API:
    the ``otel`` extra (``pip install opentelemetry-api``); the SDK is the application's choice.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        untraced_payload_tasks: Collection[str] = (),
    ) -> None:
        if _OTEL_MISSING:
            raise ConfigurationError(
                "OpenTelemetryPlugin needs the OpenTelemetry API: pip install opentelemetry-api "
                "(the otel extra)"
            )
        self.tracer = trace.get_tracer("pgworker", tracer_provider=tracer_provider)
        self.untraced_payload_tasks = frozenset(untraced_payload_tasks)
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._thread = _ThreadState()

    # -- defer ------------------------------------------------------------------------

    def before_defer(self, identifier: str, payload: Any, spec: JobSpec) -> BeforeDefer:
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "add_job",
            "messaging.destination.name": identifier,
            "graphile_worker.task_identifier": identifier,
        }
        if spec.queue is not None:
            attributes["graphile_worker.job.queue_name"] = spec.queue
        span = self.tracer.start_span(
            f"send {identifier}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        # The job id is unknown until the insert, which happens after this hook: the
        # span covers the decision to defer, and its context is what the run joins.
        try:
            span_context = span.get_span_context()
            if not span_context.is_valid or identifier in self.untraced_payload_tasks:
                return None
            carrier = _as_object(payload)
            if carrier is None:
                return None
            carrier[TRACE_KEY] = trace_info(span_context)
            return RewritePayload(carrier)
        finally:
            span.end()

    # -- run --------------------------------------------------------------------------

    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        parent, links = _parent_context(payload)
        span = self.tracer.start_span(
            f"process {job.task_identifier}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_run_attributes(job),
            links=links,
        )
        with self._lock:
            previous = self._runs.pop(job.id, None)
            self._runs[job.id] = _Run(job, span)
        if previous is not None:
            previous.span.end()
        return None

    def on_job_started(self, job: Job) -> None:
        with self._lock:
            run = self._runs.get(job.id)
        # Made current only now that the task surely runs (a later plugin's before_job_run
        # may skip it), until after_job_run, on this executor thread.
        self._detach()  # left over if an earlier plugin's after_job_run decided
        if run is not None:
            self._thread.token = otel_context.attach(trace.set_span_in_context(run.span))

    def after_job_run(self, job: Job, result: JobResult) -> AfterRun:
        self._detach()
        with self._lock:
            run = self._runs.get(job.id)
        if run is not None:
            # Ended once the outcome is recorded (a later plugin may still change it),
            # but timed to the task's own end.
            run.finished_ns = time.time_ns()
            if result.exception is not None:
                run.error_type = type(result.exception).__qualname__
                run.span.record_exception(result.exception)
        return None

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        self._finish(job.id, None, will_retry=False)

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        self._finish(job.id, error, will_retry=will_retry)

    def on_job_interrupted(self, job: Job, reason: str) -> None:
        self._finish(job.id, f"interrupted ({reason})", will_retry=True)

    def on_worker_shutdown(self, worker: WorkerInfo) -> None:
        with self._lock:
            unrecorded = [
                i for i, run in self._runs.items() if run.job.locked_by == worker.worker_id
            ]
        for job_id in unrecorded:
            self._finish(job_id, "the worker stopped before recording the outcome", True)

    # -- helpers ----------------------------------------------------------------------

    def _finish(self, job_id: int, error: str | None, will_retry: bool) -> None:
        with self._lock:
            run = self._runs.pop(job_id, None)
        if run is None:
            return
        if error is not None:
            run.span.set_attribute("error.type", run.error_type or "_OTHER")
            run.span.set_attribute("graphile_worker.job.will_retry", will_retry)
            run.span.set_status(Status(StatusCode.ERROR, error))
        run.span.end(end_time=run.finished_ns)

    def _detach(self) -> None:
        token, self._thread.token = self._thread.token, None
        if token is not None:
            otel_context.detach(token)


class _Run:
    """A job run's span, between the task's start and the outcome being recorded."""

    __slots__ = ("error_type", "finished_ns", "job", "span")

    def __init__(self, job: Job, span: Span) -> None:
        self.job = job
        self.span = span
        self.finished_ns: int | None = None
        self.error_type: str | None = None


class _ThreadState(threading.local):
    """Per executor thread: the token of the run context attached there."""

    token: Token[Context] | None = None


def _as_object(payload: Any) -> dict[str, Any] | None:
    """A copy of ``payload`` as a JSON object that may take ``_trace``, or None."""
    if isinstance(payload, Mapping):
        return dict(payload)
    if isinstance(payload, msgspec.Struct):
        if payload.__struct_config__.forbid_unknown_fields:
            return None
    elif not (dataclasses.is_dataclass(payload) and not isinstance(payload, type)):
        return None
    try:
        converted = msgspec.to_builtins(payload)
    except (TypeError, msgspec.EncodeError):
        return None  # the payload's own check reports what is wrong with it
    return converted if isinstance(converted, dict) else None  # array_like Structs


def _parent_context(payload: Any) -> tuple[Context, list[Link]]:
    """The context a run continues: the ``_trace`` of an object payload, or of the object
    items of an array payload (the Rust crate writes it there), the first as the parent
    and the others as links. An empty context (a new trace) when there is none."""
    items = [payload] if isinstance(payload, dict) else payload
    found: list[SpanContext] = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                span_context = parse_trace_info(item.get(TRACE_KEY))
                if span_context is not None and span_context not in found:
                    found.append(span_context)
    if not found:
        return Context(), []
    parent = trace.set_span_in_context(NonRecordingSpan(found[0]), Context())
    return parent, [Link(span_context) for span_context in found[1:]]


def _run_attributes(job: Job) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "run_job",
        "messaging.destination.name": job.task_identifier,
        "messaging.message.id": str(job.id),
        "graphile_worker.job.id": job.id,
        "graphile_worker.task_identifier": job.task_identifier,
        "graphile_worker.job.attempt": job.attempts,
        "graphile_worker.job.max_attempts": job.max_attempts,
        "graphile_worker.job.priority": job.priority,
    }
    if job.queue_name is not None:
        attributes["graphile_worker.job.queue_name"] = job.queue_name
    if job.locked_by is not None:
        attributes["messaging.client.id"] = job.locked_by
    return attributes
