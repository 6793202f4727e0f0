"""The operator's ``pgworker`` commands: list, inspect and change jobs, clean up, count."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import msgspec

from .admin import JOB_STATES, Admin, CleanupResult, ListedJob
from .cli_common import CliError, database_options, log_options, opened_app, parse_run_at
from .job import Job

#: Columns of `pgworker jobs`: header, width (0: the rest of the line).
_COLUMNS = (("ID", 8), ("TASK", 20), ("QUEUE", 12), ("STATE", 18), ("TRIES", 7), ("RUN AT", 20))


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _job_line(listed: ListedJob) -> str:
    job = listed.job
    cells = (
        str(job.id),
        job.task_identifier,
        job.queue_name or "-",
        listed.state,
        f"{job.attempts}/{job.max_attempts}",
        job.run_at.strftime("%Y-%m-%d %H:%M:%S"),
    )
    line = " ".join(
        cell[:width].ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
    )
    error = (job.last_error or "").splitlines()[0] if job.last_error else ""
    return f"{line} {error[:60]}".rstrip()


def _missing_ids(admin: Admin, jobs: Sequence[Job], asked: Sequence[int]) -> list[int]:
    """The ids asked for that a change left out because they name no job."""
    skipped = set(asked) - {job.id for job in jobs}
    return admin.missing_job_ids(list(skipped)) if skipped else []


def _report_changes(
    verb: str, jobs: Sequence[Job], asked: Sequence[int], missing: Sequence[int]
) -> None:
    """Say what changed and which jobs a lock kept from changing; exit 1 naming the ids
    that matched no job."""
    ids = [job.id for job in jobs]
    click.echo(f"{verb} {len(ids)} job(s){': ' + ', '.join(map(str, ids)) if ids else ''}")
    left_alone = sorted(set(asked) - set(ids) - set(missing))
    if left_alone:
        listed = ", ".join(map(str, left_alone))
        click.echo(f"Left alone (locked by a worker in the last 4 hours): {listed}")
    if missing:
        raise CliError(
            f"no job with id {missing[0]}"
            if len(missing) == 1
            else f"no jobs with ids {', '.join(map(str, missing))}"
        )


@click.command("jobs")
@click.option("--task", help="Only this task identifier.")
@click.option("--queue", help="Only this queue.")
@click.option("--key", "job_key", help="Only the job with this key.")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@database_options
@log_options
def jobs_command(
    task: str | None,
    queue: str | None,
    job_key: str | None,
    state: Any,
    limit: int,
    as_json: bool,
    database_url: str | None,
    schema: str | None,
) -> None:
    """List jobs, oldest first."""
    with opened_app(database_url, schema) as app:
        listed = app.admin.jobs(task=task, queue=queue, job_key=job_key, state=state, limit=limit)
    if as_json:
        for item in listed:
            click.echo(_json({**msgspec.to_builtins(item.job), "state": item.state}))
        return
    click.echo(" ".join(name.ljust(width) for name, width in _COLUMNS) + " LAST ERROR")
    for item in listed:
        click.echo(_job_line(item))
    if not listed:
        click.echo("(no jobs)")


@click.command("job")
@click.argument("job_id", type=int)
@database_options
@log_options
def job_command(job_id: int, database_url: str | None, schema: str | None) -> None:
    """Show one job, with its payload, as JSON."""
    with opened_app(database_url, schema) as app:
        found = app.admin.job(job_id)
        payload = app.admin.payload(job_id)
    if found is None:
        raise click.ClickException(f"no job with id {job_id}")
    click.echo(
        json.dumps(
            {**msgspec.to_builtins(found.job), "state": found.state, "payload": payload},
            indent=2,
        )
    )


@click.command("remove")
@click.argument("job_key")
@database_options
@log_options
def remove_command(job_key: str, database_url: str | None, schema: str | None) -> None:
    """Remove the pending job with JOB_KEY (a running one only loses its key)."""
    with opened_app(database_url, schema) as app:
        job = app.admin.remove_job(job_key)
    if job is None:
        raise click.ClickException(f"no job has the key {job_key!r}")
    if job.locked_at is not None:
        click.echo(f"Job {job.id} is running: it keeps running, but lost its key and won't retry")
    else:
        click.echo(f"Removed job {job.id}")


@click.command("complete")
@click.argument("job_ids", nargs=-1, type=int, required=True)
@database_options
@log_options
def complete_command(
    job_ids: tuple[int, ...], database_url: str | None, schema: str | None
) -> None:
    """Delete jobs as if they had succeeded."""
    with opened_app(database_url, schema) as app:
        done = app.admin.complete_jobs(job_ids)
        missing = _missing_ids(app.admin, done, job_ids)
    _report_changes("Completed", done, job_ids, missing)


@click.command("fail")
@click.argument("job_ids", nargs=-1, type=int, required=True)
@click.option("--reason", help="Stored as last_error (default 'Manually marked as failed').")
@database_options
@log_options
def fail_command(
    job_ids: tuple[int, ...], reason: str | None, database_url: str | None, schema: str | None
) -> None:
    """Fail jobs permanently: they stay, and never run again."""
    with opened_app(database_url, schema) as app:
        failed = app.admin.permanently_fail_jobs(job_ids, reason)
        missing = _missing_ids(app.admin, failed, job_ids)
    _report_changes("Failed", failed, job_ids, missing)


@click.command("reschedule")
@click.argument("job_ids", nargs=-1, type=int, required=True)
@click.option("--run-at", help="ISO 8601 time, or a delay like +10s; 'now' for now.")
@click.option("--priority", type=int)
@click.option("--attempts", type=click.IntRange(min=0))
@click.option("--max-attempts", type=click.IntRange(min=1))
@database_options
@log_options
def reschedule_command(
    job_ids: tuple[int, ...],
    run_at: str | None,
    priority: int | None,
    attempts: int | None,
    max_attempts: int | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Change when jobs run, their priority or their attempts (0 is a value)."""
    if run_at is None and priority is None and attempts is None and max_attempts is None:
        raise click.UsageError(
            "give at least one of --run-at, --priority, --attempts, --max-attempts"
        )
    when = parse_run_at("+0s" if run_at == "now" else run_at)
    with opened_app(database_url, schema) as app:
        changed = app.admin.reschedule_jobs(
            job_ids, run_at=when, priority=priority, attempts=attempts, max_attempts=max_attempts
        )
        missing = _missing_ids(app.admin, changed, job_ids)
    _report_changes("Rescheduled", changed, job_ids, missing)


@click.command("force-unlock")
@click.argument("worker_ids", nargs=-1, required=True)
@database_options
@log_options
def force_unlock_command(
    worker_ids: tuple[str, ...], database_url: str | None, schema: str | None
) -> None:
    """Release the jobs and queues of dead workers (their ids are the jobs' locked_by)."""
    with opened_app(database_url, schema) as app:
        count = app.admin.force_unlock_workers(worker_ids)
    click.echo(f"Unlocked {count} job(s) of {', '.join(worker_ids)}")


@click.command("cleanup")
@click.option("--delete-permafailed", is_flag=True, help="Delete permanently failed jobs.")
@click.option("--gc-job-queues", is_flag=True, help="Delete queues that hold no job.")
@click.option(
    "--gc-task-identifiers",
    is_flag=True,
    help="Delete task identifiers no job uses and no registered worker runs.",
)
@click.option("--keep", "keep", multiple=True, help="A task identifier to keep; repeat.")
@database_options
@log_options
def cleanup_command(
    delete_permafailed: bool,
    gc_job_queues: bool,
    gc_task_identifiers: bool,
    keep: tuple[str, ...],
    database_url: str | None,
    schema: str | None,
) -> None:
    """Delete what is no longer needed (say which with the flags)."""
    if not (delete_permafailed or gc_job_queues or gc_task_identifiers):
        raise click.UsageError(
            "give at least one of --delete-permafailed, --gc-job-queues, --gc-task-identifiers"
        )
    with opened_app(database_url, schema) as app:
        result = app.admin.cleanup(
            delete_permanently_failed_jobs=delete_permafailed,
            gc_job_queues=gc_job_queues,
            gc_task_identifiers=gc_task_identifiers,
            task_identifiers_to_keep=keep,
        )
    echo_cleanup(result)


def echo_cleanup(result: CleanupResult) -> None:
    """Say how many rows each cleanup step deleted."""
    for name, count in msgspec.structs.asdict(result).items():
        if count is not None:
            click.echo(f"Deleted {count} {name.replace('_', ' ')}")


#: graphile-worker's cleanup task names (``graphile-worker --cleanup``).
CLEANUP_TASKS = ("GC_TASK_IDENTIFIERS", "GC_JOB_QUEUES", "DELETE_PERMAFAILED_JOBS")


def parse_cleanup_tasks(values: Sequence[str]) -> frozenset[str]:
    """graphile-worker cleanup task names, given as comma-separated lists
    (``GC_JOB_QUEUES,DELETE_PERMAFAILED_JOBS``); a usage error names any other."""
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(CLEANUP_TASKS))
    if unknown or not names:
        raise click.BadParameter(
            f"expected a comma-separated list of {', '.join(CLEANUP_TASKS)}; "
            f"got {', '.join(values) or 'nothing'}",
            param_hint="--cleanup",
        )
    return frozenset(names)


def cleanup_by_names(admin: Admin, names: frozenset[str]) -> CleanupResult:
    """Run the cleanup tasks named as in graphile-worker."""
    return admin.cleanup(
        delete_permanently_failed_jobs="DELETE_PERMAFAILED_JOBS" in names,
        gc_job_queues="GC_JOB_QUEUES" in names,
        gc_task_identifiers="GC_TASK_IDENTIFIERS" in names,
    )


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@database_options
@log_options
def stats_command(as_json: bool, database_url: str | None, schema: str | None) -> None:
    """Count jobs by task, queue and state."""
    with opened_app(database_url, schema) as app:
        rows = app.admin.stats()
    if as_json:
        for row in rows:
            click.echo(_json(row))
        return
    click.echo(f"{'TASK':20} {'QUEUE':12} " + " ".join(f"{s.upper():>18}" for s in JOB_STATES))
    table: dict[tuple[str, str | None], dict[str, int]] = {}
    for row in rows:
        table.setdefault((row.task_identifier, row.queue_name), {})[row.state] = row.count
    for (task, queue), counts in table.items():
        cells = " ".join(f"{counts.get(s, 0):>18}" for s in JOB_STATES)
        click.echo(f"{task[:20]:20} {(queue or '-')[:12]:12} {cells}")
    if not table:
        click.echo("(no jobs)")


COMMANDS = (
    jobs_command,
    job_command,
    remove_command,
    complete_command,
    fail_command,
    reschedule_command,
    force_unlock_command,
    cleanup_command,
    stats_command,
)
