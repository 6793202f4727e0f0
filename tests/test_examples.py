"""The examples run end to end, each in a database of its own (they use the default schema)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(
    name: str, url: str | None, cwd: Path = ROOT, *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start an example (a file, or a package run with -m); with no ``url``, nothing is
    configured and it embeds a server (give it ``PGWORKER_EMBEDDED_DIR`` in ``env``)."""
    environ = {
        k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")
    }
    environ.update(env or {})
    environ["PYTHONUNBUFFERED"] = "1"
    environ["PYTHONPATH"] = str(ROOT)
    if url is not None:
        environ["DATABASE_URL"] = url
    path = ROOT / "examples" / f"{name}.py"
    target = [str(path)] if path.exists() else ["-m", f"examples.{name}"]
    return subprocess.Popen(
        [sys.executable, *target],
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_run_once_example(example_database: str) -> None:
    proc = run_example("run_once", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert sorted(line for line in output.splitlines() if line.startswith("Hello")) == sorted(
        f"Hello job {i}!" for i in range(10)
    )
    assert output.count("Completed say_hello") == 10
    assert "All runnable jobs done." in output


@pytest.mark.parametrize("database", ["configured", "embedded"])
def test_simple_example_retries_and_stops_on_sigint(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, embedded_home: Path
) -> None:
    """What `make demo` shows: say_hello jobs running and being retried; with no database
    configured, on an embedded PostgreSQL with its data in PGWORKER_EMBEDDED_DIR."""
    embedded_dir = embedded_home / "embedded"
    if database == "configured":
        proc = run_example("simple", request.getfixturevalue("example_database"))
    else:
        env = {"PGWORKER_EMBEDDED_DIR": str(embedded_dir)}
        proc = run_example("simple", None, cwd=tmp_path, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    seen: list[str] = []
    greeted: set[str] = set()
    first_attempt_failures: set[str] = set()
    deadline = time.monotonic() + 30
    try:
        # Each of the three immediate jobs must either succeed, or fail and be retried.
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if line.startswith("Hello ") and "attempt 1)" in line:
                greeted.add(line.split(" (job ")[1].split(",")[0])
            if "Failed say_hello" in line and "attempt 1 of 25, retry in 2.7 s" in line:
                first_attempt_failures.add(line.split("#")[1].split(" ")[0])
            retried = {
                job
                for job in first_attempt_failures
                if any(f"(job {job}, attempt 2)" in s for s in seen)
            }
            if len(greeted) >= 3 and retried == first_attempt_failures:
                break
        else:
            pytest.fail("the example did not show its jobs running and retrying:\n" + "".join(seen))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        if database == "embedded":
            assert "using an embedded PostgreSQL" in "".join(seen)
            assert (embedded_dir / "data" / "PG_VERSION").exists()
            assert not (tmp_path / ".pgworker").exists()  # nothing in the working directory
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close()


def test_sql_trigger_example(example_database: str) -> None:
    proc = run_example("sql_trigger", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    for email in ("ada@example.com", "alan@example.com", "grace@example.com"):
        assert f"Welcome, {email}!" in output
    assert "Every new user was welcomed." in output


def test_app_state_example(example_database: str) -> None:
    proc = run_example("app_state", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert sorted(line for line in output.splitlines() if line.startswith("Run count")) == [
        f"Run count: {n}" for n in range(1, 6)
    ]
    assert "Final count: 5" in output


def test_batch_add_jobs_example(example_database: str) -> None:
    proc = run_example("batch_add_jobs", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Added 3 send_email jobs in one statement" in output
    assert "Added 2 mixed jobs in one statement" in output
    ran = [line for line in output.splitlines() if line.startswith(("Email", "Payment"))]
    assert ran[0] == "Payment of 50 from user 123"  # priority -10 first
    assert len(ran) == 5


def test_context_helpers_example(example_database: str) -> None:
    started = time.monotonic()
    proc = run_example("context_helpers", example_database, env={"CHECK_DELAY": "1.5"})
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert output.index("Sending request req-1") < output.index("Checking request req-1")
    assert time.monotonic() - started >= 1.5  # the follow-up waited for its run_at
    assert "Workflow done." in output


def test_web_flask_example(example_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flask")
    from examples import web_flask

    app = web_flask.app
    with app.open(example_database):
        app.migrate()
        with app.pool.connection() as conn:
            conn.execute(web_flask.SIGNUPS_TABLE)
        handle = app.start()
        try:
            client = web_flask.web.test_client()
            assert client.get("/health").text == "ok"
            example = client.post("/schedule/example?name=answer&value=42")
            assert example.status_code == 202
            database = client.post("/schedule/database")
            assert database.status_code == 202
            good = client.post("/signup?email=ada@example.com")
            assert good.status_code == 201
            bad = client.post("/signup?email=nobody")
            assert bad.status_code == 400
            deadline = time.monotonic() + 10
            while len(waiting := app.admin.jobs()) > 1:  # all but the delayed one ran
                assert time.monotonic() < deadline, waiting
                time.sleep(0.05)
        finally:
            handle.stop()
        with app.pool.connection() as conn:
            signups = conn.execute("select email from signups").fetchall()
    assert signups == [("ada@example.com",)]  # the bad signup rolled back, row and job
    assert [(j.job.task_identifier, j.job.priority) for j in waiting] == [("database_task", -10)]
    assert database.json is not None
    assert waiting[0].job.id == database.json["job_id"]
    printed = capsys.readouterr().out
    assert "example_task: answer=42" in printed
    assert "send_welcome: ada@example.com" in printed
    assert "nobody" not in printed


def test_hooks_example(example_database: str) -> None:
    proc = run_example("hooks", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Processing value 1" in output
    assert "Processing value 4" in output
    assert "Processing value 2" not in output  # skipped by the validation plugin
    assert "Processing value 3" not in output  # failed by it
    assert "rejected by ValidationPlugin" in output
    assert "Metrics: started=2 completed=3 failed=1" in output


def test_crash_recovery_example(example_database: str) -> None:
    proc = run_example("crash_recovery", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    lines = output.splitlines()
    assert any(line.endswith("building quarterly (last error: None)") for line in lines), output
    assert any("(last error: Recovered from dead worker pgworker-" in line for line in lines)
    assert any(line.endswith("quarterly done") for line in lines), output
    assert "ran again" in output


def test_the_embedded_server_stops_when_the_web_example_gets_sigterm(
    tmp_path: Path, embedded_home: Path
) -> None:
    """No database configured: the web example starts the embedded server, and SIGTERM to
    the example stops that server too (no postmaster left behind)."""
    pytest.importorskip("flask")
    import socket
    import urllib.request

    embedded_dir = embedded_home / "embedded"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PGWORKER_EMBEDDED_DIR": str(embedded_dir), "PORT": str(port)}
    proc = run_example("web_flask", None, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the web example never answered"
            time.sleep(0.2)
        postmaster = int((embedded_dir / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, 0)  # running
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "using an embedded PostgreSQL" in output
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(postmaster, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the embedded server (pid {postmaster}) outlived the example:\n{output}")


def test_local_queue_example(example_database: str) -> None:
    proc = run_example("local_queue", example_database)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    processed = sorted(line for line in output.splitlines() if line.startswith("Processed"))
    assert processed == sorted(f"Processed item {i}" for i in range(20))
    assert "Fetched job" in output
    assert "(20 so far)" in output  # each job fetched once
    assert "(21 so far)" not in output
    assert "All items processed." in output
