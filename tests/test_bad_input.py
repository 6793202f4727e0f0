"""Bad input: one row per case of docs/bad-input.md (BI-01...), each checking that the
error names the culprit, writes no job, and never shows a traceback or stops a worker."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from click.testing import CliRunner
from processes import wait_for
from psycopg.conninfo import make_conninfo

from pgworker import (
    App,
    ConfigurationError,
    DatabaseUnavailableError,
    IncompatibleSchemaError,
    JobContext,
    PayloadError,
    PgWorkerError,
    RawJob,
)
from pgworker.cli import cli
from pgworker.cron import parse_crontab

Conn = psycopg.Connection[tuple[Any, ...]]
DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
#: A password distinctive enough that finding it anywhere in output is a leak.
PASSWORD = "Zq7-s3cret-Pw"
MIB = 1024 * 1024


class Order(msgspec.Struct):
    item: str
    quantity: int


@dataclass
class Env:
    """What a case needs: an open app (task ``order`` registered), its schema and
    database, a CLI runner, a scratch directory."""

    app: App
    db: Conn
    schema: str
    database_url: str
    make_app: Callable[..., App]
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    ran: list[Any]

    def count(self) -> int:
        row = self.db.execute(f'select count(*) from "{self.schema}"._private_jobs').fetchone()
        assert row is not None
        return int(row[0])

    def cli(self, *args: str) -> tuple[int, str]:
        """Run ``pgworker ARGS`` (``{url}``, ``{schema}`` filled in): the exit code and
        all output; an exception escaping the command (a traceback) fails the test."""
        filled = [
            a.replace("{url}", self.database_url).replace("{schema}", self.schema) for a in args
        ]
        result = CliRunner().invoke(cli, filled)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"pgworker {' '.join(filled)} raised {result.exception!r}"
        )
        assert "Traceback" not in result.output
        return result.exit_code, result.output

    def add_job_sql(self, identifier: str, payload: str) -> int:
        row = self.db.execute(
            f'select id from "{self.schema}".add_job(%s, %s::json)', (identifier, payload)
        ).fetchone()
        assert row is not None
        return int(row[0])


# -- kinds of rows --------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row of the table: its id, its entry point, and the check that proves it."""

    id: str
    entry: str
    check: Callable[[Env], None]


def api(id_: str, call: Callable[[App], object], error: type[Exception], match: str) -> Case:
    """A Python API call that must raise ``error`` matching ``match`` and write nothing."""

    def check(env: Env) -> None:
        before = env.count()
        with pytest.raises(error, match=match):
            call(env.app)
        assert env.count() == before

    return Case(id_, "Python API", check)


def cli_case(id_: str, args: list[str], code: int, match: str) -> Case:
    """A ``pgworker`` command that must exit with ``code``, one clear message, no job."""

    def check(env: Env) -> None:
        before = env.count()
        exit_code, output = env.cli(*args)
        assert (exit_code, bool(re.search(match, output))) == (code, True), output
        assert env.count() == before

    return Case(id_, "CLI", check)


def sql_case(id_: str, statement: str, match: str) -> Case:
    """A SQL call of add_job (``:SCHEMA`` quoted in) that PostgreSQL must refuse."""

    def check(env: Env) -> None:
        before = env.count()
        with pytest.raises(psycopg.Error, match=match):
            env.db.execute(statement.replace(":SCHEMA", f'"{env.schema}"'))
        assert env.count() == before

    return Case(id_, "SQL", check)


def custom(id_: str, entry: str) -> Callable[[Callable[[Env], None]], Case]:
    def make(fn: Callable[[Env], None]) -> Case:
        return Case(id_, entry, fn)

    return make


def order(app: App) -> Any:
    return app.tasks["order"]


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


# -- custom checks --------------------------------------------------------------------


def check_batch_over_limit(env: Env) -> None:
    small = env.make_app(max_payload_bytes=100)
    with small:
        small.migrate()
        with pytest.raises(PayloadError, match=r"payload is 1\d\d bytes of JSON.*limit of 100"):
            small.defer_raw([RawJob("raw", {"a": 1}), RawJob("raw", {"blob": "x" * 100})])
    assert env.count() == 0


def check_quoted_schema(name: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        env.db.execute("create table if not exists bi_canary (id int)")
        try:
            app = env.make_app(schema=name)
            with app:
                app.migrate()
                app.task("ping")(lambda payload: env.ran.append(payload))
                app.defer("ping", {"n": 1})
                app.run_once()
            assert env.ran == [{"n": 1}]
            found = env.db.execute(
                "select 1 from pg_namespace where nspname = %s", (name,)
            ).fetchone()
            assert found == (1,)
            assert env.db.execute("select to_regclass('bi_canary')").fetchone() != (None,)
        finally:
            env.db.execute(
                psycopg.sql.SQL("drop schema if exists {} cascade").format(
                    psycopg.sql.Identifier(name)
                )
            )
            env.db.execute("drop table if exists bi_canary")

    return check


def check_wrong_password_api(env: Env) -> None:
    with FakePasswordServer() as server:
        app = env.make_app(database_url=server.url(PASSWORD))
        with pytest.raises(DatabaseUnavailableError, match="password authentication failed") as e:
            app.open()
        assert server.passwords == [PASSWORD]  # it was sent, and refused
    assert PASSWORD not in str(e.value)


def check_malformed_url(env: Env) -> None:
    url = f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1:5432/x"
    with pytest.raises(ConfigurationError, match="invalid database URL: invalid percent") as e:
        env.make_app(database_url=url).open()
    assert PASSWORD not in str(e.value)


def check_never_migrated(env: Env) -> None:
    app = env.make_app(schema=f"{env.schema}_bare")
    with app, pytest.raises(PgWorkerError, match=r"is not installed.*pgworker migrate"):
        app.defer("raw", {})


def make_newer_breaking(env: Env) -> None:
    env.db.execute(
        f'insert into "{env.schema}".migrations (id, breaking) values (21, true), (22, false)'
    )


def check_newer_breaking(env: Env) -> None:
    make_newer_breaking(env)
    with pytest.raises(IncompatibleSchemaError, match=r"breaking revision 21.*up to 20"):
        env.app.migrate()
    with pytest.raises(IncompatibleSchemaError, match="breaking revision 21"):
        env.app.run_once()


def check_no_database(env: Env) -> None:
    for name in ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGPORT", "PGUSER", "PGSERVICE"):
        env.monkeypatch.delenv(name, raising=False)
    env.monkeypatch.setenv("PGWORKER_NO_EMBEDDED", "1")
    with pytest.raises(ConfigurationError, match="no database is configured"):
        App(schema=env.schema).open()


def write_app_module(env: Env, text: str) -> str:
    """A module in a scratch directory the CLI imports from; its MODULE:ATTR."""
    name = f"bi_app_{env.schema}"
    (env.tmp_path / f"{name}.py").write_text(text)
    env.monkeypatch.chdir(env.tmp_path)
    env.monkeypatch.syspath_prepend(str(env.tmp_path))
    return f"{name}:app"


def check_cli_typed_payload(env: Env) -> None:
    target = write_app_module(
        env,
        "import msgspec\nfrom pgworker import App\napp = App()\n"
        "class Order(msgspec.Struct):\n    item: str\n    quantity: int\n"
        "@app.task('order')\ndef order(payload: Order) -> None: ...\n",
    )
    code, output = env.cli(
        "defer", "order", '{"item": "tea", "quantity": "two"}', "--app", target,
        "--database-url", "{url}", "--schema", "{schema}",
    )  # fmt: skip
    assert (code, "$.quantity" in output) == (1, True), output
    assert env.count() == 0


def check_cli_bad_crontab(env: Env) -> None:
    target = write_app_module(env, "from pgworker import App\napp = App()\n")
    crontab = env.tmp_path / "crontab"
    crontab.write_text("0 4 * * * cleanup\n61 * * * * report\n")
    code, output = env.cli("run", target, "--crontab", str(crontab), "--database-url", "{url}")
    assert code == 1, output
    assert "line 2" in output, output
    assert "minute" in output, output


def check_cli_newer_breaking(env: Env) -> None:
    make_newer_breaking(env)
    code, output = env.cli("migrate", "--database-url", "{url}", "--schema", "{schema}")
    assert (code, "breaking revision 21" in output) == (1, True), output


def crontab_error(text: str, *words: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        with pytest.raises(ConfigurationError) as caught:
            parse_crontab(text)
        message = str(caught.value)
        assert all(word in message for word in words), message

    return check


# -- worker-side cases ----------------------------------------------------------------


def worker_case(
    payload: str, expect_error: str | None, identifier: str = "order"
) -> Callable[[Env], None]:
    """A job written by SQL that the worker can't run as it is: with ``expect_error``, it
    fails for good with that message; without, it is left alone. Either way the worker
    runs the good jobs before and after it and keeps running."""

    def check(env: Env) -> None:
        bad = env.add_job_sql(identifier, payload)
        order(env.app).defer({"item": "first", "quantity": 1})
        with env.app.start() as handle:
            wait_for(lambda: len(env.ran) == 1, 15, "the good job before")
            order(env.app).defer({"item": "second", "quantity": 2})
            wait_for(lambda: len(env.ran) == 2, 15, "the good job after")
            assert handle._thread.is_alive()
            assert handle.error is None
        # Read once the worker has stopped: outcomes are recorded in batches.
        row = env.db.execute(
            f'select attempts, max_attempts, last_error, locked_by from "{env.schema}".jobs '
            "where id = %s",
            (bad,),
        ).fetchone()
        assert [o.item for o in env.ran] == ["first", "second"]
        assert row is not None
        attempts, max_attempts, last_error, locked_by = row
        assert locked_by is None
        if expect_error is None:
            assert (attempts, last_error) == (0, None)
        else:
            assert attempts == max_attempts, "a payload that never decodes is not retried"
            assert re.search(expect_error, last_error or ""), last_error
            assert "Traceback" not in (last_error or "")

    return check


# -- passwords ------------------------------------------------------------------------


class FakePasswordServer:
    """A loopback server that speaks just enough of PostgreSQL's protocol to ask for a
    password and refuse it, as a server with the wrong password would."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.passwords: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, password: str) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/app?connect_timeout=5"

    def __enter__(self) -> FakePasswordServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._refuse(conn)

    def _refuse(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        while True:  # SSL and GSS requests: "N", then the startup message
            length, code = struct.unpack("!ii", _read(conn, 8))
            _read(conn, length - 8)
            if code in (80877103, 80877104):
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
        _, length = struct.unpack("!ci", _read(conn, 5))
        self.passwords.append(_read(conn, length - 4).rstrip(b"\0").decode())
        fields = b"SFATAL\0VFATAL\0C28P01\0" + (
            b'Mpassword authentication failed for user "postgres"\0\0'
        )
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def pgworker_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``pgworker ARGS`` in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pgworker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def check_password_cli(*command: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        target = write_app_module(env, "from pgworker import App\napp = App()\n")
        with FakePasswordServer() as server:
            args = [a.replace("TARGET", target) for a in command]
            done = pgworker_process(
                "--log-level", "debug", *args, "--database-url", server.url(PASSWORD),
                cwd=env.tmp_path,
            )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "password authentication failed" in output
        assert "Traceback" not in output
        assert PASSWORD not in output

    return check


def check_password_in_worker_logs(env: Env) -> None:
    """A worker on a URL with a password (the test server ignores it) logs it nowhere,
    at debug level, from start to stop."""
    url = make_conninfo(env.database_url, password=PASSWORD)
    target = write_app_module(
        env,
        "from pgworker import App\napp = App()\n"
        "@app.task('order')\ndef order(payload: dict) -> None: ...\n",
    )
    env.app.defer("order", {"item": "tea", "quantity": 1})
    done = pgworker_process(
        "--log-level", "debug", "run", target, "--once", "--database-url", url,
        "--schema", env.schema, cwd=env.tmp_path,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "started" in output, output
    assert env.count() == 0, output
    assert PASSWORD not in output


# -- the table ------------------------------------------------------------------------

D = "--database-url"
S = "--schema"
CASES: list[Case] = [
    # payloads, through the Python API
    api("BI-01", lambda a: order(a).defer({"item": "tea", "quantity": "two"}), PayloadError,
        r"\$\.quantity"),
    api("BI-02", lambda a: order(a).defer({"item": "tea"}), PayloadError,
        "missing required field `quantity`"),
    api("BI-03", lambda a: order(a).defer(["tea", 2]), PayloadError,
        "Expected `object`, got `array`"),
    api("BI-04", lambda a: a.defer("raw", {"when": object()}), PayloadError,
        "cannot be encoded as JSON"),
    api("BI-05", lambda a: a.defer("raw", {"score": float("nan")}), PayloadError,
        r"holds nan at `\$\.score`"),
    api("BI-06", lambda a: a.defer("raw", {"items": [1.0, float("inf")]}), PayloadError,
        r"holds inf at `\$\.items\[1\]`"),
    api("BI-07", lambda a: a.defer("raw", {"name": "\ud800"}), PayloadError,
        "cannot be encoded as JSON.*surrogates"),
    api("BI-08", lambda a: a.defer("raw", deep(5000)), PayloadError,
        "cannot be encoded as JSON.*recursion"),
    api("BI-09", lambda a: a.defer("raw", {"blob": "x" * MIB}), PayloadError,
        r"payload is 1,048,587 bytes of JSON, over the limit of 1,048,576"),
    Case("BI-10", "Python API", check_batch_over_limit),
    api("BI-11", lambda a: App(max_payload_bytes=0), ConfigurationError,
        "max_payload_bytes must be positive"),
    # identifiers, queues, keys and options, through the Python API
    api("BI-12", lambda a: a.defer(12, {}), ConfigurationError,  # type: ignore[arg-type]
        r"task identifier must be a str .*got 12 \(int\)"),
    api("BI-13", lambda a: a.defer(["order"], {}), ConfigurationError,  # type: ignore[arg-type]
        r"task identifier must be a str .*\(list\)"),
    api("BI-14", lambda a: a.defer("t" * 129, {}), ConfigurationError,
        "task identifier must be a str of 1 to 128 characters.*129 characters"),
    api("BI-15", lambda a: a.task("1-bad"), ConfigurationError,
        "task identifier '1-bad' must start with a letter"),
    api("BI-16", lambda a: a.defer("raw", queue="q" * 129), ConfigurationError,
        "queue must be a str of 1 to 128 characters.*129 characters"),
    api("BI-17", lambda a: a.defer("raw", job_key="k" * 513), ConfigurationError,
        "job_key must be a str of 1 to 512 characters.*513 characters"),
    api("BI-18", lambda a: a.defer("raw", job_key="k", job_key_mode="sometimes"),  # type: ignore[arg-type]
        ConfigurationError, "job_key_mode must be one of 'replace', 'preserve_run_at'"),
    api("BI-19", lambda a: a.defer_raw([RawJob("raw", job_key="k", job_key_mode="unsafe_dedupe")]),
        ConfigurationError, "'unsafe_dedupe' works only with defer"),
    api("BI-20", lambda a: a.defer("raw", run_at="tomorrow"), ConfigurationError,  # type: ignore[arg-type]
        "run_at must be a timezone-aware datetime.*got 'tomorrow'"),
    api("BI-21", lambda a: a.defer("raw", run_at=datetime(2030, 1, 1)), ConfigurationError,
        "run_at must be a timezone-aware datetime.*has no tzinfo"),
    api("BI-22", lambda a: a.defer("raw", delay=-5), ConfigurationError,
        "delay must be a finite duration >= 0, got -5"),
    api("BI-23", lambda a: a.defer("raw", delay=1e12), ConfigurationError,
        "delay .* is too long: it ends after the year 9999"),
    api("BI-24", lambda a: a.defer("raw", run_at=datetime.now(UTC), delay=5), ConfigurationError,
        "give run_at or delay, not both"),
    api("BI-25", lambda a: a.defer("raw", priority=40000), ConfigurationError,
        "priority must be an int from -32768 to 32767, got 40000"),
    api("BI-26", lambda a: a.defer("raw", priority=True), ConfigurationError,
        r"priority must be an int .*got True \(bool\)"),
    api("BI-27", lambda a: a.defer("raw", max_attempts=0), ConfigurationError,
        "max_attempts must be an int from 1 to 32767, got 0"),
    api("BI-28", lambda a: a.defer("raw", max_attempts=2.5), ConfigurationError,  # type: ignore[arg-type]
        r"max_attempts must be an int .*got 2.5 \(float\)"),
    api("BI-29", lambda a: a.defer("raw", flags="slow"), ConfigurationError,
        r"flags must be a list of str, like \['slow'\], got 'slow'"),
    # schemas and databases
    Case("BI-30", "Python API", check_quoted_schema('we"ird')),
    Case("BI-31", "Python API", check_quoted_schema('x"; drop table bi_canary; --')),
    api("BI-32", lambda a: App(schema="s" * 64), ConfigurationError,
        "schema must be 1 to 63 characters"),
    api("BI-33", lambda a: App(schema=""), ConfigurationError,
        "schema must be 1 to 63 characters, got ''"),
    api("BI-34", lambda a: App(database_url="postgresql://postgres@127.0.0.1:1/x").open(),
        DatabaseUnavailableError, "cannot connect to the database .*port=1 .*refused"),
    Case("BI-35", "Python API", check_wrong_password_api),
    api("BI-36",
        lambda a: App(database_url=make_conninfo(a.conninfo, dbname="bi_no_such_db")).open(),
        DatabaseUnavailableError, 'dbname=bi_no_such_db.*database "bi_no_such_db" does not exist'),
    Case("BI-37", "Python API", check_malformed_url),
    Case("BI-38", "Python API", check_never_migrated),
    Case("BI-39", "Python API", check_newer_breaking),
    Case("BI-40", "Python API", check_no_database),
    # the CLI
    cli_case("BI-41", ["defer", "raw", "{bad", D, "{url}", S, "{schema}"], 2,
             "Invalid value for PAYLOAD: not valid JSON"),
    cli_case("BI-42", ["defer", "raw", '{"score": NaN}', D, "{url}", S, "{schema}"], 1,
             r"payload holds nan at `\$\.score`"),
    Case("BI-43", "CLI", check_cli_typed_payload),
    cli_case("BI-44", ["defer", "raw", '{"blob": "' + "x" * MIB + '"}', D, "{url}", S, "{schema}"],
             1, "over the limit of 1,048,576"),
    cli_case("BI-45", ["defer", "raw", "{}", "--run-at", "tomorrow", D, "{url}", S, "{schema}"], 2,
             "Invalid value for --run-at: 'tomorrow' is neither an ISO 8601 time"),
    cli_case("BI-46", ["defer", "raw", "{}", "--run-at", "+99999999999d", D, "{url}"], 2,
             "'\\+99999999999d' ends after the year 9999"),
    cli_case("BI-47", ["defer", "raw", "{}", "--priority", "40000", D, "{url}", S, "{schema}"], 1,
             "priority must be an int from -32768 to 32767, got 40000"),
    cli_case("BI-48", ["defer", "raw", "{}", "--priority", "high", D, "{url}"], 2,
             "'high' is not a valid integer"),
    cli_case("BI-49", ["defer", "raw", "{}", "--max-attempts", "0", D, "{url}"], 2,
             "Invalid value for '--max-attempts'"),
    cli_case("BI-50", ["defer", "raw", "{}", "--job-key", "k", "--job-key-mode", "sometimes",
                       D, "{url}"], 2, "Invalid value for '--job-key-mode'"),
    cli_case("BI-51", ["defer", "t" * 129, "{}", D, "{url}", S, "{schema}"], 1,
             "task identifier must be a str of 1 to 128 characters"),
    cli_case("BI-52", ["defer", "raw", "{}", "--queue", "q" * 129, D, "{url}", S, "{schema}"], 1,
             "queue must be a str of 1 to 128 characters"),
    cli_case("BI-53", ["migrate", D, "{url}", S, "s" * 64], 1,
             "schema must be 1 to 63 characters"),
    cli_case("BI-54", ["migrate", D, "postgresql://postgres@127.0.0.1:1/x"], 1,
             "cannot connect to the database .*port=1"),
    cli_case("BI-55", ["jobs", D, "{url}", S, "{schema}_bare"], 1,
             "is not installed in this database: run `pgworker migrate`"),
    Case("BI-56", "CLI", check_cli_newer_breaking),
    cli_case("BI-57", ["complete", "999999", D, "{url}", S, "{schema}"], 1,
             "no job with id 999999"),
    Case("BI-58", "CLI", check_cli_bad_crontab),
    cli_case("BI-59", ["run", "bi_no_such_module:app", D, "{url}"], 2,
             "cannot import 'bi_no_such_module'"),
    # crontab lines, through the public parser
    Case("BI-60", "Python API", crontab_error("61 * * * * report", "line 1", "minute", "61")),
    Case("BI-61", "Python API", crontab_error("* * * * report", "line 1", "five")),
    Case("BI-62", "Python API", crontab_error("* * * * * report ?bogus=1", "line 1", "bogus")),
    Case("BI-63", "Python API", crontab_error("# c\n* * * * * report {a:", "line 2", "payload")),
    # SQL: add_job refuses what graphile-worker's columns can't hold
    sql_case("BI-64", "select :SCHEMA.add_job(repeat('t', 129))", "tasks_identifier_check"),
    sql_case("BI-65", "select :SCHEMA.add_job('t', queue_name => repeat('q', 129))",
             "job_queues_queue_name_check"),
    sql_case("BI-66", "select :SCHEMA.add_job('t', job_key => repeat('k', 513))",
             "jobs_key_check"),
    sql_case("BI-67", "select :SCHEMA.add_job('t', job_key => 'k', job_key_mode => 'sometimes')",
             "Invalid job_key_mode value"),
    sql_case("BI-68", "select :SCHEMA.add_job('t', priority => 40000)", "smallint out of range"),
    sql_case("BI-69", "select :SCHEMA.add_job('t', max_attempts => 0)",
             "jobs_max_attempts_check"),
    sql_case("BI-70", "select :SCHEMA.add_job('t', '{\"a\": NaN}')",
             "invalid input syntax for type json"),
    sql_case("BI-71", "select :SCHEMA.add_job('t', run_at => 'next week')",
             'invalid input syntax for type timestamp with time zone: "next week"'),
    # the worker: jobs written by SQL (or another worker) that can't run as they are
    Case("BI-72", "worker", worker_case('{"item": "tea", "quantity": "two"}',
                                         r"payload does not match Order.*\$\.quantity")),
    Case("BI-73", "worker", worker_case('{"item": "tea", "quantity": 1e400}',
                                         "Number out of range")),
    Case("BI-74", "worker", worker_case(
        '{"extra": ' + "[" * 3000 + "]" * 3000 + ', "item": "tea", "quantity": 1}',
        "payload cannot be decoded: maximum recursion depth")),
    Case("BI-75", "worker", worker_case("null", "Expected `object`, got `null`")),
    Case("BI-76", "worker", worker_case("{}", None, identifier="no_such_task")),
    # passwords
    Case("BI-77", "CLI", check_password_cli("migrate")),
    Case("BI-78", "CLI", check_password_cli("run", "TARGET")),
    Case("BI-79", "CLI", check_password_cli("jobs")),
    Case("BI-80", "worker", check_password_in_worker_logs),
    api("BI-81", lambda a: App(schema="50%off"), ConfigurationError,
        "schema may not contain '%' .*got '50%off'"),
]  # fmt: skip


@pytest.fixture
def env(
    make_app: Callable[..., App],
    db: Conn,
    schema: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Env]:
    ran: list[Any] = []
    app = make_app()

    @app.task("order")
    def take_order(payload: Order) -> None:
        ran.append(payload)

    with app:
        app.migrate()
        yield Env(app, db, schema, database_url, make_app, tmp_path, monkeypatch, ran)
    db.execute(f'drop schema if exists "{schema}_bare" cascade')


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, env: Env) -> None:
    case.check(env)


def doc_rows() -> dict[str, str]:
    """The ids of docs/bad-input.md's table and the entry point of each."""
    rows = re.findall(r"^\| (BI-\d+) \| ([^|]+?) \|", DOC.read_text(encoding="utf-8"), re.M)
    return dict(rows)


def test_the_doc_and_the_tests_list_the_same_cases() -> None:
    assert [case.id for case in CASES] == [f"BI-{n:02d}" for n in range(1, len(CASES) + 1)]
    assert doc_rows() == {case.id: case.entry for case in CASES}
    assert len(CASES) >= 40


def test_jobs_with_hand_written_flags_of_other_shapes_still_run(
    opened: App, db: Conn, schema: str
) -> None:
    """graphile-worker writes flags as an object of flag -> true; a hand-written array
    or scalar in that column must not break the claim that returns it. Regression: a
    scalar made the claim fail after it had committed, its job locked for good."""
    seen: dict[int, list[str] | None] = {}

    @opened.task("flagged")
    def flagged(payload: dict[str, int], ctx: JobContext) -> None:
        seen[payload["n"]] = ctx.job.flags

    for n, flags in enumerate(['{"b": true, "a": true}', '["b", "a", 3]', "true", "5"]):
        job = flagged.defer({"n": n})
        db.execute(
            f'update "{schema}"._private_jobs set flags = %s::jsonb where id = %s',
            (flags, job.id),
        )
    opened.run_once()
    assert seen == {0: ["a", "b"], 1: ["a", "b"], 2: None, 3: None}
    assert db.execute(f'select count(*) from "{schema}"._private_jobs').fetchone() == (0,)
