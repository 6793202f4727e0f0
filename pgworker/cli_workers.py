"""``pgworker workers`` (the registry, what each worker holds, unserved tasks) and
``pgworker cancel``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from .cli_common import database_options, log_options, opened_app
from .recovery import Recovery
from .store_recovery import RegisteredWorker

_COLUMNS = (
    ("WORKER", 38),
    ("RUNTIME", 12),
    ("STATE", 13),
    ("HEARTBEAT", 10),
    ("STARTED", 20),
    ("JOBS", 5),
    ("QUEUES", 7),
    ("LISTEN", 27),
)


@click.command("workers")
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0, min_open=True),
    default=Recovery().stale_after,
    show_default=True,
    help="Seconds of silence after which a pgworker worker counts as dead (Rust workers: 300).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@database_options
@log_options
def workers_command(
    stale_after: float, as_json: bool, database_url: str | None, schema: str | None
) -> None:
    """List workers: live and stale ones from the registry (pgworker and Rust workers
    register, Node workers don't), lock owners missing from it, and the tasks with
    waiting jobs that no registered worker runs."""
    with opened_app(database_url, schema) as app:
        workers = app.admin.workers()
        unserved = app.admin.unserved_tasks()
    if as_json:
        document = {
            "workers": [_as_json(w, stale_after) for w in workers],
            "unserved_tasks": unserved,
        }
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(" ".join(name.ljust(width) for name, width in _COLUMNS) + " HOST")
    for worker in workers:
        click.echo(_line(worker, stale_after))
    if not workers:
        click.echo("(no workers)")
    if any(w.registered is False for w in workers):
        click.echo(
            "\nUnregistered owners are Node graphile-worker workers (they don't heartbeat) "
            "or workers taken for dead; their locks are reset after 4 hours."
        )
    if unserved:
        click.echo(
            "\nTasks with waiting jobs that no registered worker runs "
            "(Node workers don't register, so one may still serve them):"
        )
        for identifier, count in unserved.items():
            click.echo(f"  {identifier}: {count} job(s)")


def _line(worker: RegisteredWorker, stale_after: float) -> str:
    metadata = worker.metadata or {}
    host = f"{metadata['hostname']}:{metadata['pid']}" if "hostname" in metadata else "-"
    cells = (
        worker.worker_id,
        worker.runtime,
        worker.state(stale_after),
        "-" if worker.heartbeat_age is None else f"{worker.heartbeat_age:.0f} s ago",
        _when(worker.started_at),
        str(worker.jobs_held),
        str(worker.queues_held),
        _listen_cell(worker),
    )
    return " ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True)) + (
        f" {host}"
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _listen(worker: RegisteredWorker) -> dict[str, Any] | None:
    """The state of a pgworker worker's LISTEN connection, as its heartbeat last wrote
    it into its registry metadata (the listener reports changes within a second)."""
    entry = (worker.metadata or {}).get("listen")
    return entry if isinstance(entry, dict) and "state" in entry else None


def _listen_cell(worker: RegisteredWorker) -> str:
    """``listening``, ``reconnecting since HH:MM:SS`` (in the STARTED column's time
    zone), or ``-`` (not a pgworker worker, a run-once one, or not connected yet)."""
    entry = _listen(worker)
    if entry is None:
        return "-"
    if entry["state"] == "listening":
        return "listening"
    try:
        since = datetime.fromisoformat(entry["since"])
    except (KeyError, TypeError, ValueError):
        return str(entry["state"])
    if worker.started_at is not None and worker.started_at.tzinfo is not None:
        since = since.astimezone(worker.started_at.tzinfo)
    return f"{entry['state']} since {since:%H:%M:%S}"


def _as_json(worker: RegisteredWorker, stale_after: float) -> dict[str, Any]:
    return {
        "worker_id": worker.worker_id,
        "runtime": worker.runtime,
        "state": worker.state(stale_after),
        "heartbeat_age": worker.heartbeat_age,
        "started_at": None if worker.started_at is None else worker.started_at.isoformat(),
        "last_heartbeat_at": (
            None if worker.last_heartbeat_at is None else worker.last_heartbeat_at.isoformat()
        ),
        "jobs_held": worker.jobs_held,
        "queues_held": worker.queues_held,
        "listen": _listen(worker),
        "metadata": worker.metadata,
    }


@click.command("cancel")
@click.argument("job_id", type=int)
@click.option("--reason", default="cancelled by an operator", show_default=True)
@database_options
def cancel_command(job_id: int, reason: str, database_url: str | None, schema: str | None) -> None:
    """Cancel a job: delete it if it isn't running, else ask its worker to stop it (it then
    fails with "Cancelled: REASON" and is not retried)."""
    with opened_app(database_url, schema) as app:
        outcome = app.admin.cancel(job_id, reason)
    if outcome == "not_found":
        raise click.ClickException(f"no job with id {job_id}")
    if outcome == "removed":
        click.echo(f"Removed job {job_id} (it wasn't running)")
    else:
        click.echo(f"Job {job_id} is running: its worker was asked to stop it")
