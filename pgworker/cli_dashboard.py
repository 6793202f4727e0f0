"""``pgworker dashboard``: serve the web dashboard of an app (the ``dashboard`` extra)."""

from __future__ import annotations

import logging
import os

import click

from .cli_common import app_database, database_options, load_app, log_options, reported_errors
from .errors import ConfigurationError
from .recovery import Recovery

logger = logging.getLogger(__name__)

_MISSING_FLASK = (
    "the dashboard needs Flask: pip install 'pgworker-queue[dashboard]' (or pip install flask)"
)


@click.command("dashboard")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    metavar="NAME",
    multiple=True,
    help="Also answer requests for this Host name (a proxy's); repeat for more.",
)
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0, min_open=True),
    default=Recovery().stale_after,
    show_default=True,
    help="Seconds of heartbeat silence after which a pgworker worker shows as stale.",
)
@click.option("--chart-hours", type=click.IntRange(min=1, max=48), default=3, show_default=True)
@database_options
@log_options
def dashboard_command(
    target: str,
    host: str,
    port: int,
    allowed_hosts: tuple[str, ...],
    stale_after: float,
    chart_hours: int,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Serve the web dashboard of the app at MODULE:ATTR: job counts, workers, a chart
    of completed and failed jobs per minute, the job list and actions on jobs.

    It listens on 127.0.0.1 unless --host says otherwise; another address needs a
    password in PGWORKER_DASHBOARD_PASSWORD (HTTP basic auth, any user name).
    """
    try:
        from werkzeug.serving import make_server

        from .dashboard.security import PASSWORD_VARIABLE, check_bind
        from .dashboard.web import create_dashboard
    except ImportError as exc:
        raise click.ClickException(_MISSING_FLASK) from exc
    password = os.environ.get(PASSWORD_VARIABLE) or None
    try:
        check_bind(host, password)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    app = load_app(target)
    with reported_errors(), app_database(app, database_url) as url:
        app.configure(database_url=url, schema=schema)
        with app:
            app.migrate()
            web = create_dashboard(
                app,
                password=password,
                bind_host=host,
                allowed_hosts=allowed_hosts,
                stale_after=stale_after,
                chart_hours=chart_hours,
            )
            server = make_server(host, port, web, threaded=True)
            shown = f"[{host}]" if ":" in host else host
            logger.info("Dashboard of schema %r at http://%s:%d/", app.schema, shown, server.port)
            click.echo(f"Dashboard at http://{shown}:{server.port}/ (Ctrl-C to stop)")
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
