"""The operator's commands, through CliRunner, on jobs in every state."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pgworker import App
from pgworker.cli import cli

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def run(database_url: str, schema: str) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(
            cli,
            [*args, "--database-url", database_url, "--schema", schema],
            catch_exceptions=False,
        )

    return invoke


@pytest.mark.gw("RS-08")
def test_jobs_lists_with_filters_and_json(run: Any, selection: dict[str, int]) -> None:
    table = run("jobs")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "TASK", "QUEUE", "STATE"]
    assert len(lines) == 7
    assert "permanently_failed" in table.output
    assert "dead" in table.output  # last error

    listed = run("jobs", "--state", "retrying", "--json")
    [record] = [json.loads(line) for line in listed.output.splitlines()]
    assert (record["id"], record["state"], record["last_error"]) == (
        selection["retrying"],
        "retrying",
        "boom",
    )
    assert run("jobs", "--task", "nothing").output.splitlines()[-1] == "(no jobs)"
    assert run("jobs", "--state", "lost").exit_code == 2


@pytest.mark.gw("RS-08")
def test_job_shows_one_job_with_payload(run: Any, selection: dict[str, int]) -> None:
    shown = run("job", str(selection["scheduled"]))
    assert shown.exit_code == 0
    record = json.loads(shown.stdout)
    assert (record["queue_name"], record["state"], record["payload"]) == (
        "q1",
        "scheduled",
        {"name": "scheduled"},
    )
    missing = run("job", "999999")
    assert missing.exit_code == 1
    assert "no job with id 999999" in missing.output


def test_commands_that_change_jobs_say_what_changed(
    run: Any, selection: dict[str, int], db: Conn, schema: str
) -> None:
    running, waiting = str(selection["running"]), str(selection["waiting"])

    result = run("complete", waiting, running)
    assert result.exit_code == 0
    assert f"Completed 1 job(s): {waiting}" in result.output
    assert f"Left alone (locked by a worker in the last 4 hours): {running}" in result.output

    result = run("fail", str(selection["scheduled"]), "--reason", "obsolete")
    assert f"Failed 1 job(s): {selection['scheduled']}" in result.output

    result = run("reschedule", str(selection["failed"]), "--attempts", "0", "--run-at", "now")
    assert f"Rescheduled 1 job(s): {selection['failed']}" in result.output
    assert run("reschedule", str(selection["failed"])).exit_code == 2

    result = run("remove", "key-running")
    assert "keeps running, but lost its key" in result.output
    assert run("remove", "key-nothing").exit_code == 1

    result = run("force-unlock", "test")
    assert result.output.strip() == "Unlocked 1 job(s) of test"

    states = dict(db.execute(f'select id, last_error from "{schema}".jobs').fetchall())
    assert states[selection["scheduled"]] == "obsolete"
    assert selection["waiting"] not in states


@pytest.mark.parametrize("command", [("complete",), ("fail",), ("reschedule", "--priority", "3")])
def test_ids_that_match_no_job_exit_1_and_are_named(
    run: Any, selection: dict[str, int], command: tuple[str, ...]
) -> None:
    nothing = run(*command, "987654321")
    assert nothing.exit_code == 1
    assert "no job with id 987654321" in nothing.stderr
    assert nothing.stdout.strip() == f"{VERBS[command[0]]} 0 job(s)"

    waiting, running = selection["waiting"], selection["running"]
    partial = run(*command, str(waiting), "987654321", str(running), "987654320")
    assert partial.exit_code == 1
    assert f"{VERBS[command[0]]} 1 job(s): {waiting}" in partial.stdout
    assert f"Left alone (locked by a worker in the last 4 hours): {running}" in partial.stdout
    assert "no jobs with ids 987654320, 987654321" in partial.stderr


VERBS = {"complete": "Completed", "fail": "Failed", "reschedule": "Rescheduled"}


def test_cleanup_and_stats(run: Any, selection: dict[str, int], opened: App) -> None:
    stats = run("stats")
    assert stats.exit_code == 0
    assert stats.output.splitlines()[0].split()[:3] == ["TASK", "QUEUE", "WAITING"]
    rows = [json.loads(line) for line in run("stats", "--json").output.splitlines()]
    assert sum(row["count"] for row in rows) == 6

    assert run("cleanup").exit_code == 2
    result = run("cleanup", "--delete-permafailed", "--gc-job-queues")
    assert result.exit_code == 0
    assert "Deleted 1 permanently failed jobs" in result.output
    assert "Deleted 1 job queues" in result.output
