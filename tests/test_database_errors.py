"""Driver errors out of defer and the admin API become pgworker errors, on real triggers."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from pgworker import App, DatabaseError, DatabaseUnavailableError, JobSpec, RawJob
from pgworker.cli import cli

Conn = psycopg.Connection[tuple[Any, ...]]


def test_deferring_in_a_read_only_transaction(opened: App, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("set transaction read only")
        with pytest.raises(DatabaseError, match=r"\[25006\].*writable primary") as caught:
            opened.defer("job", {}, conn=conn)
    assert caught.value.sqlstate == "25006"
    assert caught.value.server_message == "cannot execute INSERT in a read-only transaction"
    assert isinstance(caught.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
    assert isinstance(caught.value, psycopg.Error)  # code catching the driver's errors works


def test_deferring_in_an_aborted_transaction_says_to_roll_back(
    opened: App, database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / 0")
        with pytest.raises(DatabaseError, match="conn=: roll it back first") as caught:
            opened.defer_raw([RawJob("job", {})], conn=conn)
    assert caught.value.sqlstate == "25P02"


def test_values_the_columns_cannot_hold_are_database_errors(opened: App) -> None:
    """What validation would stop, sent straight to the store's public methods."""
    with pytest.raises(DatabaseError, match=r"\[22003\]: smallint out of range"):
        opened.store.add_job("job", "{}", JobSpec(max_attempts=40000))
    job = opened.defer("job", {})
    with pytest.raises(DatabaseError, match=r"\[22003\]: smallint out of range"):
        opened.store.reschedule_jobs(
            [job.id], run_at=None, priority=99999, attempts=None, max_attempts=None
        )


def test_a_connection_killed_inside_the_callers_transaction(
    opened: App, database_url: str, db: Conn
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("select 1")  # the transaction is open
        db.execute("select pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with pytest.raises(DatabaseUnavailableError, match="the database is unreachable"):
            opened.defer("job", {}, conn=conn)


def test_the_cli_reports_a_database_error_in_one_sentence(
    opened: App, database_url: str, schema: str
) -> None:
    read_only = psycopg.conninfo.make_conninfo(
        database_url, options="-c default_transaction_read_only=on"
    )
    result = CliRunner().invoke(
        cli, ["defer", "job", "--database-url", read_only, "--schema", schema]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: the database refused the statement [25006]")
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
