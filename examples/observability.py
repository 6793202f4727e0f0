"""Traces and metrics for two jobs: OpenTelemetry spans from a web request through the
defer to the run, printed as JSON lines, then the Prometheus metrics text.

Run it with ``python examples/observability.py`` (from a clone, with the extras and the
OpenTelemetry SDK: ``pip install -e '.[otel,prometheus]' opentelemetry-sdk``). In
production, export the spans with an OTLP exporter instead, and serve the metrics with
``serve_metrics(metrics, 9400)``.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import generate_latest

from pgworker import App
from pgworker.otel import OpenTelemetryPlugin
from pgworker.prometheus import PrometheusPlugin


def one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


provider = TracerProvider(resource=Resource.create({"service.name": "observability-example"}))
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
metrics = PrometheusPlugin()
app = App(concurrency=2, plugins=[OpenTelemetryPlugin(tracer_provider=provider), metrics])


class Resize(msgspec.Struct):
    path: str
    width: int


@app.task("resize_image")
def resize_image(payload: Resize) -> None:
    """Succeeds; a span made here nests under the job's run span."""
    with provider.get_tracer("example").start_as_current_span("resize"):
        pass


@app.task("charge_card", max_attempts=1)
def charge_card(payload: dict[str, Any]) -> None:
    """Fails for good: its run span is an error."""
    raise RuntimeError("card declined")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    tracer = provider.get_tracer("example")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        with tracer.start_as_current_span("POST /upload"):  # a web request, say
            resize_image.defer(Resize(path="cat.png", width=128))
            charge_card.defer({"amount_cents": 500})
        app.run_once()
        metrics.refresh(app)  # a running worker does this every 15 s
    print(generate_latest(metrics.registry).decode(), end="")


if __name__ == "__main__":
    main()
