"""Prometheus metrics from the hooks and the jobs table, served at ``/metrics``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from .admin import JOB_STATES, StatRow
from .errors import ConfigurationError
from .hooks import AfterRun, JobResult, Plugin
from .job import Job

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:
    _PROMETHEUS_MISSING = True
    Collector = object  # type: ignore[assignment,misc]
else:
    _PROMETHEUS_MISSING = False

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .app import App
    from .hooks import WorkerInfo

logger = logging.getLogger(__name__)

_MISSING_MESSAGE = (
    "pgworker's Prometheus metrics need prometheus-client: pip install prometheus-client "
    "(the prometheus extra)"
)
#: Job duration buckets in seconds: jobs run from milliseconds to an hour.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)  # fmt: skip
DEFAULT_REFRESH_INTERVAL = 15.0


class PrometheusPlugin(Plugin):
    """Exports what workers do as Prometheus metrics.

    From the hooks of this process's workers, labelled by ``task``:

    - ``pgworker_jobs_started_total``: task functions called;
    - ``pgworker_jobs_completed_total``: jobs that succeeded (skipped ones included);
    - ``pgworker_jobs_failed_total``: failed attempts, retried or not;
    - ``pgworker_jobs_permanently_failed_total``: jobs that failed for good;
    - ``pgworker_job_duration_seconds`` (also by ``outcome``, completed or failed): how
      long the task functions ran.

    From the database, every ``refresh_interval`` seconds while a worker runs (by a
    thread started with the first worker and stopped with the last):

    - ``pgworker_jobs``: jobs by ``task``, ``queue`` ("" for none) and ``state``
      (waiting, scheduled, running, retrying, permanently_failed), across all workers;
    - ``pgworker_jobs_refreshed_timestamp_seconds``: when those counts were taken.

    The counts come from ``app.admin.stats()``, which reads the whole jobs table: with
    many workers or a large table, raise the interval, or pass ``refresh_interval=None``
    on all but one process. A failed refresh is logged and tried again next time.

    The metrics go to ``registry``, a new CollectorRegistry by default (pass
    ``prometheus_client.REGISTRY`` to use the global one). Serve them with
    ``serve_metrics(plugin, port)``. Needs the ``prometheus`` extra:
    the ``prometheus`` extra (``pip install prometheus-client``).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        refresh_interval: float | None = DEFAULT_REFRESH_INTERVAL,
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        if _PROMETHEUS_MISSING:
            raise ConfigurationError(_MISSING_MESSAGE)
        if refresh_interval is not None and refresh_interval <= 0:
            raise ConfigurationError(
                f"refresh_interval must be positive (or None), got {refresh_interval}"
            )
        self.registry = CollectorRegistry() if registry is None else registry
        self.refresh_interval = refresh_interval
        self.jobs_started = Counter(
            "pgworker_jobs_started",
            "Jobs whose task function was called",
            ["task"],
            registry=self.registry,
        )
        self.jobs_completed = Counter(
            "pgworker_jobs_completed",
            "Jobs that succeeded (skipped by a plugin included)",
            ["task"],
            registry=self.registry,
        )
        self.jobs_failed = Counter(
            "pgworker_jobs_failed",
            "Failed job attempts, retried or not",
            ["task"],
            registry=self.registry,
        )
        self.jobs_permanently_failed = Counter(
            "pgworker_jobs_permanently_failed",
            "Jobs that failed with no attempts left",
            ["task"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "pgworker_job_duration_seconds",
            "How long task functions ran, by outcome (completed or failed)",
            ["task", "outcome"],
            buckets=duration_buckets,
            registry=self.registry,
        )
        self.job_counts = _JobCountsCollector()
        self.registry.register(self.job_counts)
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # job id -> perf_counter at start
        self._durations: dict[int, float] = {}  # job id -> ms, as after_job_run saw it
        self._workers: dict[str, WorkerInfo] = {}
        self._refresher: _Refresher | None = None

    def refresh(self, app: App | WorkerInfo) -> None:
        """Count the jobs of ``app`` (or of a worker's database) by task, queue and state
        now, for ``pgworker_jobs``. Raises what the query raises (the background refresh
        logs it instead)."""
        self.job_counts.update(app.admin.stats(), time.time())

    # -- hooks ------------------------------------------------------------------------

    def on_worker_start(self, worker: WorkerInfo) -> None:
        with self._lock:
            self._workers[worker.worker_id] = worker
            if self.refresh_interval is None or self._refresher is not None:
                return
            self._refresher = _Refresher(self, self.refresh_interval)
        self._refresher.start()

    def on_worker_shutdown(self, worker: WorkerInfo) -> None:
        with self._lock:
            self._workers.pop(worker.worker_id, None)
            refresher = None if self._workers else self._refresher
            if refresher is not None:
                self._refresher = None
            if not self._workers:
                self._started.clear()
                self._durations.clear()
        if refresher is not None:
            refresher.stop()

    def on_job_started(self, job: Job) -> None:
        self.jobs_started.labels(job.task_identifier).inc()
        with self._lock:
            self._started[job.id] = time.perf_counter()

    def after_job_run(self, job: Job, result: JobResult) -> AfterRun:
        with self._lock:
            self._durations[job.id] = result.duration_ms
        return None

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        self.jobs_completed.labels(job.task_identifier).inc()
        if self._take_duration(job.id) is not None:  # None: skipped, never started
            self.job_duration.labels(job.task_identifier, "completed").observe(duration_ms / 1000)

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        self.jobs_failed.labels(job.task_identifier).inc()
        duration_ms = self._take_duration(job.id)
        if duration_ms is not None:
            self.job_duration.labels(job.task_identifier, "failed").observe(duration_ms / 1000)

    def on_job_permanently_failed(self, job: Job, error: str) -> None:
        self.jobs_permanently_failed.labels(job.task_identifier).inc()

    def on_job_interrupted(self, job: Job, reason: str) -> None:
        self._take_duration(job.id)

    # -- helpers ----------------------------------------------------------------------

    def _take_duration(self, job_id: int) -> float | None:
        """How long the job's task ran (ms): as the worker timed it when after_job_run
        reached this plugin, else until now; None if its task never started."""
        with self._lock:
            started = self._started.pop(job_id, None)
            measured = self._durations.pop(job_id, None)
        if started is None:
            return None
        return measured if measured is not None else (time.perf_counter() - started) * 1000

    def _any_app(self) -> WorkerInfo | None:
        with self._lock:
            return next(iter(self._workers.values()), None)


class _JobCountsCollector(Collector):
    """Serves the last job counts taken, swapped in whole so a scrape sees one refresh."""

    def __init__(self) -> None:
        self._snapshot: tuple[list[StatRow], float] | None = None

    def update(self, rows: list[StatRow], taken_at: float) -> None:
        self._snapshot = (rows, taken_at)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        jobs, refreshed = self._families()
        if snapshot is not None:
            rows, taken_at = snapshot
            counts = {(r.task_identifier, r.queue_name or "", r.state): r.count for r in rows}
            # Every state of each task and queue seen, zeros included, so that a state
            # emptying out reads 0 rather than vanishing.
            for task, queue in sorted({(task, queue) for task, queue, _ in counts}):
                for state in JOB_STATES:
                    jobs.add_metric([task, queue, state], counts.get((task, queue, state), 0))
            refreshed.add_metric([], taken_at)
        yield jobs
        yield refreshed

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "pgworker_jobs",
                "Jobs in the database by task, queue and state, at the last refresh",
                labels=["task", "queue", "state"],
            ),
            GaugeMetricFamily(
                "pgworker_jobs_refreshed_timestamp_seconds",
                "When pgworker_jobs was last refreshed (Unix time)",
            ),
        )


class _Refresher:
    """A daemon thread refreshing the job gauges until stopped."""

    def __init__(self, plugin: PrometheusPlugin, interval: float) -> None:
        self.plugin = plugin
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="pgworker-metrics-refresh", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            app = self.plugin._any_app()
            if app is None:
                return
            try:
                self.plugin.refresh(app)
            except Exception as exc:  # the thread must outlive any one failure
                logger.warning(
                    "Refreshing the pgworker_jobs gauges failed (%s); trying again in %.0f s",
                    exc,
                    self.interval,
                )
            self._stop.wait(self.interval)


class MetricsServer:
    """The HTTP server ``serve_metrics`` started; ``stop()`` (or leaving a ``with`` block)
    shuts it down."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        address = server.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_metrics(
    source: PrometheusPlugin | CollectorRegistry, port: int, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve the metrics of ``source`` (a plugin, or any registry) at
    ``http://host:port/metrics`` from a daemon thread; port 0 picks a free port (see the
    returned server's ``port``). Loopback only by default: pass ``host="0.0.0.0"`` for a
    scraper on another machine."""
    if _PROMETHEUS_MISSING:
        raise ConfigurationError(_MISSING_MESSAGE)
    registry = source.registry if isinstance(source, PrometheusPlugin) else source
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
            "choose another port, or stop what holds it"
        ) from exc
    return MetricsServer(server, thread)


def ensure_prometheus_plugin(app: App) -> PrometheusPlugin:
    """The app's PrometheusPlugin, added to it first if it has none (what
    ``pgworker run --metrics-port`` does)."""
    for plugin in app.hooks.plugins:
        if isinstance(plugin, PrometheusPlugin):
            return plugin
    plugin = PrometheusPlugin()
    app.add_plugin(plugin)
    return plugin
