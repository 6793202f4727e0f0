"""Cron in the app, the worker and the CLI: tables from Python or crontab text, refusal
of bad tables, and a running worker registering its items."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from click.testing import CliRunner

from pgworker import App, ConfigurationError, Cron, CrontabError
from pgworker.cli import cli

Conn = psycopg.Connection[tuple[Any, ...]]


class SayHello(msgspec.Struct):
    message: str


@pytest.mark.gw("WU-17")
def test_the_cron_table_comes_from_python_and_crontab_text(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text('# nightly\n0 4 * * * report ?id=nightly&fill=1h {"kind": "full"}\n')
    app = make_app(crontab="*/5 * * * * cleanup", crontab_file=crontab)
    app.cron(Cron.daily_at("backup", 2, 30).id("backup-job"))
    assert [(i.identifier, i.task, i.expression.text) for i in app.cron_items] == [
        ("cleanup", "cleanup", "*/5 * * * *"),
        ("nightly", "report", "0 4 * * *"),
        ("backup-job", "backup", "30 2 * * *"),
    ]
    assert app.cron_items[1].backfill_period == timedelta(hours=1)
    with pytest.raises(ConfigurationError, match="already has an item 'nightly'"):
        app.add_crontab("0 5 * * * report ?id=nightly")
    with pytest.raises(CrontabError, match=r"line 2 of crontab: .*'61'"):
        make_app(crontab="* * * * * ok\n61 * * * * bad")


def test_a_cron_payload_that_does_not_fit_its_task_stops_the_worker(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task("say_hello")
    def say_hello(payload: SayHello) -> None: ...

    app.cron(Cron.every_minute("say_hello").payload({"msg": "wrong field"}))
    with pytest.raises(Exception, match="message"):
        app.run_once()


def test_a_running_worker_registers_and_schedules_its_items(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app()

    @app.task("say_hello")
    def say_hello(payload: SayHello) -> None: ...

    app.cron(Cron.every_minute(say_hello).payload(SayHello(message="tick")))
    with app:
        handle = app.start()
        try:
            deadline = time.monotonic() + 5
            while not (
                rows := db.execute(
                    f'select identifier, last_execution from "{schema}"._private_known_crontabs'
                ).fetchall()
            ):
                assert time.monotonic() < deadline, "the cron item was never registered"
                time.sleep(0.05)
        finally:
            handle.stop(timeout=5)
    assert rows == [("say_hello", None)]  # first sight: known, never backfilled


def test_cli_crontab_errors_name_the_line(tmp_path: Path, database_url: str, schema: str) -> None:
    bad = tmp_path / "crontab"
    bad.write_text("* * * * * say_hello\n* * * * * say_hello ?queue=x&queue=y\n")
    runner = CliRunner()
    checked = runner.invoke(cli, ["cron", "check", str(bad)])
    assert checked.exit_code == 1
    assert f"line 2 of {bad}" in checked.output
    refused = runner.invoke(
        cli,
        [
            "run",
            "examples.run_once:app",
            "--crontab",
            str(bad),
            "--database-url",
            database_url,
            "--schema",
            schema,
        ],
    )
    assert refused.exit_code == 1
    assert "line 2" in refused.output
    good = tmp_path / "good"
    good.write_text('*/2 * * * * say_hello ?fill=10m {"message": "hi"}\n')
    assert "1 item(s), all valid" in runner.invoke(cli, ["cron", "check", str(good)]).output


def test_cli_cron_list_shows_next_runs() -> None:
    result = CliRunner().invoke(cli, ["cron", "list", "examples.crontab:app"])
    assert result.exit_code == 0, result.output
    assert "say_hello: */2 * * * *" in result.output
    assert "weekday-report: 0 4 * * 1-5" in result.output
    assert result.output.count("next: ") == 2


def test_crontab_problems_are_one_sentence(make_app: Callable[..., App], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the crontab"):
        make_app(crontab_file=tmp_path / "missing")
    result = CliRunner().invoke(
        cli, ["run", "examples.run_once:app", "--once", "--crontab", __file__]
    )
    assert result.exit_code == 2
    assert "--once schedules no cron" in result.output
