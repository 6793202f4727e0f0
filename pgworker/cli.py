"""The ``pgworker`` command: thin click commands over App."""

from __future__ import annotations

import gc
import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
import msgspec

from . import cli_admin
from .cli_common import (
    CONTEXT_SETTINGS,
    LogSettings,
    app_database,
    database_options,
    load_app,
    log_options,
    opened_app,
    parse_run_at,
    reported_errors,
)
from .cli_cron import cron_group
from .cli_dashboard import dashboard_command
from .cli_processes import supervise
from .cli_workers import cancel_command, workers_command
from .logs import configure_logging


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="pgworker")
@log_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """pgworker: a PostgreSQL job queue that speaks graphile-worker's protocol.

    --log-level and --log-format go before or after the command name.
    """
    settings = ctx.ensure_object(LogSettings)
    configure_logging(settings.level, settings.format)


@cli.command()
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--once", is_flag=True, help="Run the jobs runnable now, then exit.")
@click.option(
    "-j", "--concurrency", type=click.IntRange(min=1), help="Jobs of sync tasks run at once."
)
@click.option(
    "--async-concurrency",
    type=click.IntRange(min=1),
    help="Jobs of async def tasks run at once on the event loop (default 100).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    help="Seconds between polls when no notification arrives.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    help="Jobs claimed beyond those running, to claim in batches (short jobs only).",
)
@click.option(
    "--crontab",
    "crontab_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Add the recurring jobs of this crontab file (graphile-worker's format).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics on HOST:PORT/metrics (needs the prometheus extra).",
)
@click.option(
    "--metrics-host",
    metavar="HOST",
    help="The address --metrics-port listens on (default 127.0.0.1; 0.0.0.0 for all).",
)
@click.option(
    "--cleanup",
    "cleanup_tasks",
    metavar="TASKS",
    multiple=True,
    help="Instead of running jobs, clean up and exit, as graphile-worker --cleanup: a "
    "comma-separated list of GC_TASK_IDENTIFIERS (the app's own are kept), GC_JOB_QUEUES, "
    "DELETE_PERMAFAILED_JOBS.",
)
@click.option(
    "--worker-id",
    metavar="ID",
    help="This worker's id (locked_by of its jobs); default pgworker-<random hex>.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Run this many worker processes under one supervisor, which restarts any that "
    "exits (for CPU-bound tasks that one process's GIL serialises).",
)
@click.option(
    "--max-jobs-per-child",
    type=click.IntRange(min=1),
    help="Stop gracefully after this many jobs (with --processes: a fresh process follows).",
)
@click.option(
    "--max-memory-per-child",
    type=click.FloatRange(min=1),
    metavar="MB",
    help="Stop gracefully once resident memory is above this many MiB (as above).",
)
@click.option(
    "--no-listen",
    is_flag=True,
    help="Poll only, without LISTEN (PgBouncer in transaction mode): new jobs wait up "
    "to --poll-interval.",
)
@click.option(
    "--no-prepared-statements",
    is_flag=True,
    help="Never prepare statements (PgBouncer in transaction mode).",
)
@database_options
@log_options
def run(
    target: str,
    once: bool,
    concurrency: int | None,
    async_concurrency: int | None,
    poll_interval: float | None,
    prefetch: int | None,
    crontab_file: str | None,
    metrics_port: int | None,
    metrics_host: str | None,
    cleanup_tasks: tuple[str, ...],
    worker_id: str | None,
    processes: int | None,
    max_jobs_per_child: int | None,
    max_memory_per_child: float | None,
    no_listen: bool,
    no_prepared_statements: bool,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Run a worker for the app at MODULE:ATTR until SIGINT/SIGTERM."""
    if processes is not None:
        if once or cleanup_tasks or metrics_port is not None:
            raise click.UsageError(
                "--processes runs workers until stopped: not with --once, --cleanup or "
                "--metrics-port (each process would serve its own metrics)"
            )
        supervise(target, processes, database_url, click.get_current_context().params)
        return
    if once and crontab_file:
        raise click.UsageError("--crontab needs a running worker: --once schedules no cron")
    if metrics_host is not None and metrics_port is None:
        raise click.UsageError("--metrics-host needs --metrics-port")
    cleanup = cli_admin.parse_cleanup_tasks(cleanup_tasks) if cleanup_tasks else None
    if cleanup is not None and (once or crontab_file or metrics_port is not None):
        raise click.UsageError("--cleanup cleans up and exits: it runs no jobs")
    app = load_app(target)
    with reported_errors(), app_database(app, database_url) as url, ExitStack() as stack:
        app.configure(
            database_url=url,
            schema=schema,
            concurrency=concurrency,
            async_concurrency=async_concurrency,
            poll_interval=poll_interval,
            prefetch=prefetch,
            worker_id=worker_id,
            listen=False if no_listen else None,
            prepare_statements=False if no_prepared_statements else None,
        )
        if cleanup is not None:
            with app:
                app.migrate()
                cli_admin.echo_cleanup(cli_admin.cleanup_by_names(app.admin, cleanup))
            return
        if crontab_file is not None:
            app.add_crontab(Path(crontab_file).read_text(encoding="utf-8"), source=crontab_file)
        if metrics_port is not None:
            from .prometheus import ensure_prometheus_plugin, serve_metrics

            plugin = ensure_prometheus_plugin(app)
            server = stack.enter_context(
                serve_metrics(plugin, metrics_port, metrics_host or "127.0.0.1")
            )
            logging.getLogger(__name__).info("Serving metrics at %s", server.url)
        # What is loaded by now (modules, the app, its tasks) lives as long as the process:
        # out of the cyclic collector's sight, no collection walks it again while jobs
        # run, nor at exit (some 40 ms of a run-once worker's life, psycopg's types most).
        gc.freeze()
        if once:
            app.run_once()
        else:
            app.run(max_jobs=max_jobs_per_child, max_memory_mb=max_memory_per_child)


@cli.command()
@click.option("--app", "target", metavar="MODULE:ATTR", help="Use this app's schema.")
@database_options
@log_options
def migrate(target: str | None, database_url: str | None, schema: str | None) -> None:
    """Install or upgrade the worker schema, then exit."""
    with opened_app(database_url, schema, target) as app:
        outcome = app.migrate()
    click.echo(f"Schema {app.schema!r}: {outcome.value}")


@cli.command()
@click.argument("identifier")
@click.argument("payload", required=False)
@click.option("--app", "target", metavar="MODULE:ATTR", help="Check the payload with this app.")
@click.option("--queue", help="Named queue: its jobs run one at a time.")
@click.option("--run-at", help="ISO 8601 time, or a delay like +10s, +5m, +2h.")
@click.option("--priority", type=int, help="Lower runs first (default 0).")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Default 25.")
@click.option("--job-key", help="Replace the pending job with this key, if any.")
@click.option("--job-key-mode", type=click.Choice(["replace", "preserve_run_at", "unsafe_dedupe"]))
@click.option("--flag", "flags", multiple=True, help="A flag; repeat for more.")
@click.option(
    "--enqueue-schema",
    metavar="NAME",
    help="Add it through the enqueue functions of this schema (see grant-enqueue).",
)
@database_options
@log_options
def defer(
    identifier: str,
    payload: str | None,
    target: str | None,
    queue: str | None,
    run_at: str | None,
    priority: int | None,
    max_attempts: int | None,
    job_key: str | None,
    job_key_mode: Any,
    flags: tuple[str, ...],
    enqueue_schema: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Enqueue one job of task IDENTIFIER with PAYLOAD (JSON, default {})."""
    try:
        value = json.loads(payload) if payload else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="PAYLOAD") from exc
    when = parse_run_at(run_at)
    with opened_app(database_url, schema, target) as app:
        if enqueue_schema is not None:
            app.enqueue_schema = enqueue_schema
        job = app.defer(
            identifier,
            value,
            run_at=when,
            priority=priority,
            queue=queue,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            flags=list(flags) or None,
        )
    click.echo(msgspec.json.encode(job).decode())


@cli.command("grant-enqueue")
@click.argument("role")
@click.option(
    "--enqueue-schema",
    metavar="NAME",
    help="Where the functions live (default: the app's, else the worker schema + _enqueue).",
)
@click.option("--revoke", is_flag=True, help="Take the permission back instead.")
@click.option("--app", "target", metavar="MODULE:ATTR", help="Use this app's schemas.")
@database_options
@log_options
def grant_enqueue(
    role: str,
    enqueue_schema: str | None,
    revoke: bool,
    target: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Let ROLE add jobs, and nothing else, through pgworker's SECURITY DEFINER
    functions (installed or updated first). Run it as the worker schema's owner."""
    with opened_app(database_url, schema, target) as app:
        name = app.grant_enqueue(role, enqueue_schema=enqueue_schema, revoke=revoke)
    done = "may no longer add" if revoke else "may add"
    click.echo(f"Role {role!r} {done} jobs through {name}.add_job and {name}.add_jobs")


for command in cli_admin.COMMANDS:
    cli.add_command(command)
cli.add_command(cron_group)
cli.add_command(workers_command)
cli.add_command(cancel_command)
cli.add_command(dashboard_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="pgworker")


if __name__ == "__main__":
    main()
