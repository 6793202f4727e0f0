"""Prometheus: counters and durations after a run of known jobs, job gauges refreshed from
the database, and /metrics served over HTTP."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgworker import App, ConfigurationError
from pgworker.admin import Admin
from pgworker.prometheus import PrometheusPlugin, ensure_prometheus_plugin, serve_metrics

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    """The samples of a metrics text, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def make_metrics_app(make_app: Callable[..., App], plugin: PrometheusPlugin) -> App:
    app = make_app(plugins=[plugin])

    @app.task("ok")
    def ok(payload: dict[str, Any]) -> None:
        time.sleep(0.002)

    @app.task("boom")
    def boom(payload: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    return app


def test_counters_and_durations_after_known_jobs(make_app: Callable[..., App]) -> None:
    plugin = PrometheusPlugin(refresh_interval=None)
    app = make_metrics_app(make_app, plugin)
    with app:
        app.migrate()
        for i in range(3):
            app.defer("ok", {"i": i})
        app.defer("boom", {}, max_attempts=1)  # fails for good
        app.defer("boom", {}, max_attempts=5)  # fails, will be retried later
        app.run_once()
    samples = scrape(generate_latest(plugin.registry).decode())
    expected = {
        ("pgworker_jobs_started_total", "ok"): 3,
        ("pgworker_jobs_completed_total", "ok"): 3,
        ("pgworker_jobs_failed_total", "ok"): None,
        ("pgworker_jobs_started_total", "boom"): 2,
        ("pgworker_jobs_completed_total", "boom"): None,
        ("pgworker_jobs_failed_total", "boom"): 2,
        ("pgworker_jobs_permanently_failed_total", "boom"): 1,
        ("pgworker_jobs_permanently_failed_total", "ok"): None,
    }
    assert {key: value(samples, key[0], task=key[1]) for key in expected} == expected
    duration = "pgworker_job_duration_seconds"
    assert value(samples, f"{duration}_count", task="ok", outcome="completed") == 3
    assert value(samples, f"{duration}_count", task="boom", outcome="failed") == 2
    assert value(samples, f"{duration}_count", task="ok", outcome="failed") is None
    total = value(samples, f"{duration}_sum", task="ok", outcome="completed")
    assert total is not None
    assert 0.006 <= total < 5
    # Nothing refreshed the job gauges (refresh_interval=None): they have no samples.
    assert not [key for key in samples if key[0] == "pgworker_jobs"]


def test_job_gauges_after_a_refresh(make_app: Callable[..., App]) -> None:
    plugin = PrometheusPlugin(refresh_interval=None)
    app = make_metrics_app(make_app, plugin)
    with app:
        app.migrate()
        app.defer("boom", {}, max_attempts=1)
        app.defer("boom", {}, max_attempts=5)
        app.run_once()  # one permanently failed, one retrying
        app.defer("ok", {}, queue="mail")
        app.defer("ok", {}, queue="mail")
        app.defer("ok", {}, run_at=datetime.now(UTC) + timedelta(hours=1))
        before = time.time()
        plugin.refresh(app)
    samples = scrape(generate_latest(plugin.registry).decode())
    gauges = {
        (dict(labels)["task"], dict(labels)["queue"], dict(labels)["state"]): count
        for (name, labels), count in samples.items()
        if name == "pgworker_jobs" and count
    }
    assert gauges == {
        ("ok", "mail", "waiting"): 2,
        ("ok", "", "scheduled"): 1,
        ("boom", "", "retrying"): 1,
        ("boom", "", "permanently_failed"): 1,
    }
    # Every state of a task and queue seen is there, zeros included.
    assert value(samples, "pgworker_jobs", task="ok", queue="mail", state="running") == 0
    refreshed = value(samples, "pgworker_jobs_refreshed_timestamp_seconds")
    assert refreshed is not None
    assert before <= refreshed <= time.time()


def test_a_running_worker_refreshes_the_gauges_in_the_background(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = PrometheusPlugin(refresh_interval=0.05)
    app = make_metrics_app(make_app, plugin)

    def scheduled() -> float | None:
        samples = scrape(generate_latest(plugin.registry).decode())
        return value(samples, "pgworker_jobs", task="ok", queue="", state="scheduled")

    with app:
        app.migrate()
        with app.start():
            app.defer("ok", {}, run_at=datetime.now(UTC) + timedelta(hours=1))
            deadline = time.monotonic() + 10
            while scheduled() != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert scheduled() == 1
            refresher = plugin._refresher
            assert refresher is not None
            assert refresher.is_alive

            # A failing refresh is logged, and the thread carries on.
            def broken(self: Admin) -> list[Any]:
                raise RuntimeError("stats unavailable")

            with caplog.at_level(logging.WARNING, logger="pgworker.prometheus"):
                monkeypatch.setattr(Admin, "stats", broken)
                deadline = time.monotonic() + 10
                while "stats unavailable" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.02)
                monkeypatch.undo()
            assert "Refreshing the pgworker_jobs gauges failed (stats unavailable)" in caplog.text
            assert refresher.is_alive
        assert not refresher.is_alive  # stopped with the worker
        assert plugin._refresher is None


def test_serve_metrics_serves_the_text_on_loopback() -> None:
    plugin = PrometheusPlugin(refresh_interval=None)
    plugin.jobs_completed.labels("ok").inc(7)
    with serve_metrics(plugin, 0) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
    assert value(scrape(text), "pgworker_jobs_completed_total", task="ok") == 7
    with pytest.raises(urllib.error.URLError):  # stopped: the port is closed
        urllib.request.urlopen(server.url, timeout=5)

    registry = CollectorRegistry()  # any registry will do too
    with serve_metrics(registry, 0) as server:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
        with pytest.raises(
            ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"
        ):
            serve_metrics(registry, server.port)


def test_ensure_prometheus_plugin_adds_one_plugin(make_app: Callable[..., App]) -> None:
    app = make_app()
    plugin = ensure_prometheus_plugin(app)
    assert ensure_prometheus_plugin(app) is plugin
    assert app.hooks.plugins == [plugin]
    with pytest.raises(ConfigurationError, match="refresh_interval must be positive"):
        PrometheusPlugin(refresh_interval=0)


def test_without_prometheus_client_the_plugin_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pgworker

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "pgworker.prometheus")
    monkeypatch.setattr(pgworker, "prometheus", pgworker.prometheus, raising=False)
    fresh = importlib.import_module("pgworker.prometheus")
    message = re.escape("pip install prometheus-client")
    with pytest.raises(ConfigurationError, match=message):
        fresh.PrometheusPlugin()
    with pytest.raises(ConfigurationError, match=message):
        fresh.serve_metrics(object(), 0)
