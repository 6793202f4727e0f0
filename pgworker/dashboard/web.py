"""The dashboard's Flask application: its pages and the fragments they refresh."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, abort, render_template, request

from ..admin import JOB_STATES, Admin
from ..app import App
from ..errors import PgWorkerError
from ..recovery import Recovery
from .actions import register_actions
from .security import allowed_host_names, csrf_token, install_guards
from .stats import StatsStore
from .views import JobFilters, build_chart, counts_by

logger = logging.getLogger(__name__)

#: Seconds between the pages' refreshes.
REFRESH_SECONDS = 5


class Dashboard:
    """What the dashboard's views read and change: one open App's admin API (its job
    listing pages too) and its stats table."""

    def __init__(self, app: App, *, stale_after: float, chart_hours: int, page_size: int) -> None:
        self.app = app
        self.schema = app.schema
        self.admin: Admin = app.admin
        self.stats = StatsStore(app.pool, app.schema)
        self.stale_after = stale_after
        self.chart_hours = chart_hours
        self.page_size = page_size
        #: Why the chart has no data source, when the stats table could not be made.
        self.stats_problem: str | None = None

    def ensure_stats(self) -> None:
        """Create the stats table if missing; the chart says why when that fails."""
        try:
            self.stats.ensure()
        except PgWorkerError as exc:
            self.stats_problem = str(exc)
            logger.warning("The dashboard's chart has no data: %s", exc)

    def overview(self) -> dict[str, Any]:
        """Counts by task and queue, the workers, and the chart."""
        stats = self.admin.stats()
        now = datetime.now(UTC)
        minutes = (
            []
            if self.stats_problem
            else self.stats.per_minute(now - timedelta(hours=self.chart_hours, minutes=1))
        )
        return {
            "by_task": counts_by(stats, "task"),
            "by_queue": counts_by(stats, "queue"),
            "workers": self.admin.workers(),
            "stale_after": self.stale_after,
            "chart": build_chart(minutes, now=now, hours=self.chart_hours),
            "stats_problem": self.stats_problem,
            "stats_schema": self.stats.stats_schema,
            "tasks": sorted({row.task_identifier for row in stats}),
            "queues": sorted({row.queue_name for row in stats if row.queue_name}),
        }

    def job_list(self, filters: JobFilters) -> dict[str, Any]:
        """One page of jobs for ``filters``, and whether another follows."""
        rows = self.admin.jobs(
            task=filters.task,
            queue=filters.queue,
            job_key=filters.job_key,
            state=filters.state,
            limit=self.page_size + 1,
            offset=(filters.page - 1) * self.page_size,
            newest_first=True,
        )
        return {
            "jobs": rows[: self.page_size],
            "has_next": len(rows) > self.page_size,
            "filters": filters,
        }


def create_dashboard(
    app: App,
    *,
    password: str | None = None,
    bind_host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    stale_after: float | None = None,
    chart_hours: int = 3,
    page_size: int = 50,
    secret_key: bytes | None = None,
) -> Flask:
    """The dashboard of ``app`` (which must be open) as a WSGI application.

    - ``password``: required, as HTTP basic auth (any user name), when given.
    - ``bind_host``, ``allowed_hosts``: the Host headers answered are the loopback
      names, ``bind_host`` (unless a wildcard) and ``allowed_hosts``; others get 400.
    - ``stale_after``: seconds of heartbeat silence after which a pgworker worker shows
      as stale (default: ``Recovery().stale_after``).
    - ``chart_hours``, ``page_size``: the chart's span and the job list's page.
    - ``secret_key``: signs the session cookie that holds the CSRF token (default: a
      random one, so sessions end when the process does).

    It creates ``<schema>_stats.job_minutes`` if missing (see ``StatsPlugin``).
    """
    dashboard = Dashboard(
        app,
        stale_after=Recovery().stale_after if stale_after is None else stale_after,
        chart_hours=chart_hours,
        page_size=page_size,
    )
    dashboard.ensure_stats()
    flask_app = Flask(__name__)
    flask_app.secret_key = secret_key or secrets.token_bytes(32)
    install_guards(
        flask_app,
        allowed_hosts=allowed_host_names(bind_host, allowed_hosts),
        password=password,
    )
    flask_app.extensions["pgworker_dashboard"] = dashboard

    @flask_app.context_processor
    def common() -> dict[str, Any]:
        return {
            "csrf_token": csrf_token(),
            "schema": dashboard.schema,
            "states": JOB_STATES,
            "refresh": REFRESH_SECONDS,
            "utc": UTC,
        }

    @flask_app.get("/")
    def index() -> str:
        filters = JobFilters.from_args(request.args)
        return render_template("index.html", **dashboard.overview(), **dashboard.job_list(filters))

    @flask_app.get("/fragments/overview")
    def overview_fragment() -> str:
        return render_template("overview.html", **dashboard.overview())

    @flask_app.get("/fragments/jobs")
    def jobs_fragment() -> str:
        filters = JobFilters.from_args(request.args)
        return render_template("jobs.html", oob=True, **dashboard.job_list(filters))

    @flask_app.get("/jobs/<int:job_id>")
    def job_page(job_id: int) -> str:
        return render_template("job_page.html", **_job_detail(dashboard, job_id))

    @flask_app.get("/fragments/jobs/<int:job_id>")
    def job_fragment(job_id: int) -> str:
        return render_template("job_detail.html", **_job_detail(dashboard, job_id))

    register_actions(flask_app, dashboard)
    return flask_app


def _job_detail(dashboard: Dashboard, job_id: int) -> dict[str, Any]:
    listed = dashboard.admin.job(job_id)
    if listed is None:
        if request.headers.get("HX-Request"):
            return {"job_id": job_id, "listed": None, "payload": None}
        abort(404, description=f"no job with id {job_id} (finished jobs are deleted)")
    payload = dashboard.admin.payload(job_id)
    return {
        "job_id": job_id,
        "listed": listed,
        "payload": json.dumps(payload, indent=2, ensure_ascii=False),
    }
