"""The ``pgworker cron`` commands: show an app's cron table, check a crontab file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from .cli_common import load_app, log_options, reported_errors
from .cron import CronItem, parse_crontab
from .cron_expr import format_cron_ts

#: How many upcoming run times ``cron list`` shows per item.
UPCOMING = 3


def _describe(item: CronItem) -> str:
    options = [
        f"{name}={value}"
        for name, value in (
            ("task", item.task),
            ("fill", item.backfill_period or None),
            ("queue", item.queue),
            ("priority", item.priority),
            ("max_attempts", item.max_attempts),
            ("job_key", item.job_key),
            ("job_key_mode", item.job_key_mode),
        )
        if value is not None
    ]
    moment, upcoming = datetime.now(UTC), []
    for _ in range(UPCOMING):
        found = item.expression.next_after(moment)
        if found is None:
            break
        upcoming.append(format_cron_ts(found))
        moment = found
    lines = [f"{item.identifier}: {item.expression.text}  ({', '.join(options)})"]
    if item.payload:
        lines.append(f"  payload: {item.payload}")
    lines.append(f"  next: {', '.join(upcoming) or 'never'}")
    return "\n".join(lines)


@click.group("cron")
def cron_group() -> None:
    """Recurring jobs."""


@cron_group.command("list")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--crontab", "crontab_file", type=click.Path(dir_okay=False, exists=True))
@log_options
def list_command(target: str, crontab_file: str | None) -> None:
    """Show the cron table of the app at MODULE:ATTR, with each item's next run times."""
    app = load_app(target)
    with reported_errors():
        if crontab_file:
            app.add_crontab(Path(crontab_file).read_text(encoding="utf-8"), source=crontab_file)
    for item in app.cron_items:
        click.echo(_describe(item))
    if not app.cron_items:
        click.echo("(no cron items)")


@cron_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@log_options
def check_command(path: str) -> None:
    """Check a crontab file; exit 1 naming the first bad line."""
    with reported_errors():
        items = parse_crontab(Path(path).read_text(encoding="utf-8"), source=path)
    click.echo(f"{path}: {len(items)} item(s), all valid")
