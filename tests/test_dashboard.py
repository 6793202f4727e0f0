"""The web dashboard through Flask's test client: the Host check, CSRF and cross-site
refusals, the password rule, each action's effect in SQL, the job list's filters and
pages, and the per-minute stats a worker writes. The browser test is beside it, in
test_dashboard_browser.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from processes import wait_for

from pgworker import App
from pgworker.cli import cli
from pgworker.dashboard import StatsPlugin, stats_schema_name

pytest.importorskip("flask", reason="the dashboard extra (flask) is not installed")

from flask.testing import FlaskClient

from pgworker.dashboard.security import check_bind
from pgworker.dashboard.web import create_dashboard

ROOT = Path(__file__).resolve().parent.parent
HOST = {"Host": "127.0.0.1:8000"}
HTMX = {**HOST, "HX-Request": "true"}
FUTURE = datetime(2200, 1, 1, tzinfo=UTC)
Db = psycopg.Connection[tuple[Any, ...]]


def build_app(make_app: Callable[..., App], **options: Any) -> App:
    """An app with a task that succeeds and one that fails for good at once."""
    app = make_app(**options)

    @app.task("ok")
    def ok(payload: dict[str, Any]) -> None:
        pass

    @app.task("boom", max_attempts=1)
    def boom(payload: dict[str, Any]) -> None:
        raise ValueError(f"kaput {payload['n']}")

    return app


@pytest.fixture(autouse=True)
def drop_stats_schema(database_url: str, schema: str) -> Iterator[None]:
    """The stats schema beside the test's worker schema goes too."""
    yield
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{stats_schema_name(schema)}" cascade')


@pytest.fixture
def stats() -> StatsPlugin:
    return StatsPlugin()


@pytest.fixture
def worked(make_app: Callable[..., App], stats: StatsPlugin) -> Iterator[App]:
    """An open app whose worker ran 2 jobs that completed and 1 that failed for good."""
    app = build_app(make_app, plugins=[stats])
    with app:
        app.migrate()
        for n in range(2):
            app.defer("ok", {"n": n})
        app.defer("boom", {"n": 7})
        app.run_once(install_signal_handlers=False)
        yield app


def client_and_token(web: Any) -> tuple[FlaskClient, str]:
    client: FlaskClient = web.test_client()
    page = client.get("/", headers=HOST)
    assert page.status_code == 200
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
    assert match
    return client, match.group(1)


def job_row(db: Db, schema: str, job_id: int) -> dict[str, Any] | None:
    cur = db.execute(
        f"select run_at, attempts, max_attempts, last_error, locked_by, key "
        f'from "{schema}".jobs where id = %s',
        (job_id,),
    )
    row = cur.fetchone()
    return (
        None
        if row is None
        else dict(zip([c.name for c in cur.description or ()], row, strict=True))
    )


def test_stats_plugin_writes_real_counts_per_minute(
    worked: App, db: Db, schema: str, stats: StatsPlugin
) -> None:
    rows = db.execute(
        f'select task_identifier, outcome, count from "{stats_schema_name(schema)}".job_minutes '
        "order by 1, 2"
    ).fetchall()
    assert rows == [
        ("boom", "failed", 1),
        ("boom", "permanently_failed", 1),
        ("ok", "completed", 2),
    ]
    assert stats.pending() == {}
    web = create_dashboard(worked)
    html = web.test_client().get("/", headers=HOST).get_data(as_text=True)
    # Summed over the bars: the three jobs may have run across a minute's turn.
    assert sum(map(int, re.findall(r'data-completed="(\d+)"', html))) == 2
    assert sum(map(int, re.findall(r'data-failed="(\d+)"', html))) == 1
    assert re.search(r'id="chart-completed">2<', html)
    assert re.search(r'id="chart-failed">1<', html)


def test_no_stats_table_unless_enabled(make_app: Callable[..., App], db: Db, schema: str) -> None:
    app = build_app(make_app)
    with app:
        app.migrate()
        app.defer("ok", {"n": 1})
        app.run_once(install_signal_handlers=False)
    found = db.execute(
        "select count(*) from pg_namespace where nspname = %s", (stats_schema_name(schema),)
    ).fetchone()
    assert found == (0,)


def test_host_header_must_be_allowed(worked: App) -> None:
    client = create_dashboard(worked, allowed_hosts=["jobs.example.org"]).test_client()
    assert client.get("/", headers={"Host": "evil.example:8000"}).status_code == 400
    assert client.get("/", headers={"Host": "jobs.example.org"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:1234"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:8000"}).status_code == 200


def test_posts_need_the_session_token_and_the_same_origin(worked: App, db: Db, schema: str) -> None:
    job = worked.defer("ok", {"n": 1}, job_key="keep-me", run_at=FUTURE)
    client, token = client_and_token(create_dashboard(worked))
    form = {"job_key": "keep-me"}
    refusals = [
        client.post("/actions/remove-by-key", data=form, headers=HOST),
        client.post("/actions/remove-by-key", data={**form, "csrf_token": "forged"}, headers=HOST),
        client.post(
            "/actions/remove-by-key",
            data={**form, "csrf_token": token},
            headers={**HOST, "Origin": "http://evil.example"},
        ),
        client.post(
            "/actions/remove-by-key",
            data={**form, "csrf_token": token},
            headers={**HOST, "Sec-Fetch-Site": "cross-site"},
        ),
        # A fresh client has the token's text but not the session it belongs to.
        create_dashboard(worked)
        .test_client()
        .post("/actions/remove-by-key", data={**form, "csrf_token": token}, headers=HOST),
    ]
    assert [r.status_code for r in refusals] == [403] * 5
    assert b"cross-site request refused" in refusals[2].data
    assert client.get("/actions/remove-by-key", headers=HOST).status_code == 405
    assert job_row(db, schema, job.id) is not None
    done = client.post(
        "/actions/remove-by-key",
        data=form,
        headers={
            **HTMX,
            "X-CSRF-Token": token,
            "Origin": "http://127.0.0.1:8000",
            "Sec-Fetch-Site": "same-origin",
        },
    )
    assert done.status_code == 200
    assert done.headers["HX-Trigger"] == "refresh"
    assert f"Removed job {job.id}" in done.get_data(as_text=True)
    assert job_row(db, schema, job.id) is None


def test_password_rule_and_basic_auth(worked: App) -> None:
    with pytest.raises(Exception, match="PGWORKER_DASHBOARD_PASSWORD"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    result = CliRunner().invoke(
        cli,
        ["dashboard", "nowhere:app", "--host", "0.0.0.0"],
        env={"PGWORKER_DASHBOARD_PASSWORD": ""},
    )
    assert result.exit_code == 2
    assert "without a password" in result.output
    client = create_dashboard(worked, password="s3cret").test_client()
    assert client.get("/", headers=HOST).status_code == 401
    assert client.get("/", headers=HOST, auth=("admin", "wrong")).status_code == 401
    assert client.get("/", headers=HOST, auth=("admin", "s3cret")).status_code == 200


def test_without_a_password_only_this_machine_may_connect(worked: App, db: Db, schema: str) -> None:
    """The Host header is the client's to forge: mounted in any WSGI server, a dashboard
    without a password answers loopback clients only, whatever Host they send."""
    job = worked.defer("ok", {"n": 1}, run_at=FUTURE)
    remote = {"REMOTE_ADDR": "203.0.113.5"}
    open_client, token = client_and_token(create_dashboard(worked))
    assert open_client.get("/", headers=HOST, environ_base=remote).status_code == 403
    refused = open_client.post(
        f"/jobs/{job.id}/fail",
        data={"csrf_token": token},
        headers=HOST,
        environ_base=remote,
    )
    assert refused.status_code == 403
    assert db.execute(
        f'select attempts from "{schema}".jobs where id = %s', [job.id]
    ).fetchone() == (0,)
    assert (
        open_client.get("/", headers=HOST, environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    )
    guarded = create_dashboard(worked, password="s3cret").test_client()
    assert (
        guarded.get("/", headers=HOST, environ_base=remote, auth=("admin", "s3cret")).status_code
        == 200
    )


def test_each_action_changes_the_database(worked: App, db: Db, schema: str) -> None:
    client, token = client_and_token(create_dashboard(worked))
    headers = {**HTMX, "X-CSRF-Token": token}

    def post(path: str, **form: str) -> str:
        response = client.post(path, data=form, headers=headers)
        assert response.status_code == 200
        return response.get_data(as_text=True)

    failed_id = db.execute(f'select id from "{schema}".jobs where task_identifier = %s', ("boom",))
    failed = failed_id.fetchone()
    assert failed is not None
    assert "will run now" in post(f"/jobs/{failed[0]}/run-now")
    row = job_row(db, schema, failed[0])
    assert row is not None
    assert row["attempts"] == 0
    assert row["run_at"] <= datetime.now(UTC)

    later = worked.defer("ok", {"n": 2})
    assert "rescheduled" in post(f"/jobs/{later.id}/reschedule", run_at="+2h")
    row = job_row(db, schema, later.id)
    assert row is not None
    assert row["run_at"] > datetime.now(UTC) + timedelta(minutes=110)
    assert "neither" in post(f"/jobs/{later.id}/reschedule", run_at="tomorrow-ish")

    assert "permanently failed" in post(f"/jobs/{later.id}/fail", reason="not wanted")
    row = job_row(db, schema, later.id)
    assert row is not None
    assert (row["attempts"], row["last_error"]) == (row["max_attempts"], "not wanted")

    assert "cancelled and removed" in post(f"/jobs/{later.id}/cancel")
    assert job_row(db, schema, later.id) is None
    assert f"No job {later.id}" in post(f"/jobs/{later.id}/cancel")

    keyed = worked.defer("ok", {"n": 3}, job_key="by-key")
    assert f"Removed job {keyed.id}" in post("/actions/remove-by-key", job_key="by-key")
    assert job_row(db, schema, keyed.id) is None

    held = worked.defer("ok", {"n": 4})
    db.execute(
        f"update \"{schema}\"._private_jobs set locked_by = 'dead-1', locked_at = now() "
        "where id = %s",
        (held.id,),
    )
    page = client.get("/fragments/overview", headers=HTMX).get_data(as_text=True)
    assert 'data-worker="dead-1" data-state="unregistered"' in page
    assert "Unlocked 1 job(s)" in post("/actions/unlock-worker", worker_id="dead-1")
    row = job_row(db, schema, held.id)
    assert row is not None
    assert row["locked_by"] is None

    running = worked.defer("ok", {"n": 5})
    db.execute(
        f"""insert into "{schema}"._private_workers (id, last_heartbeat_at, metadata)
        values ('live-1', now(), '{{"runtime": "pgworker"}}')"""
    )
    db.execute(
        f"update \"{schema}\"._private_jobs set locked_by = 'live-1', locked_at = now() "
        "where id = %s",
        (running.id,),
    )
    refused = client.post("/actions/unlock-worker", data={"worker_id": "live-1"}, headers=headers)
    assert "Worker live-1 is alive" in refused.get_data(as_text=True)
    row = job_row(db, schema, running.id)
    assert row is not None
    assert row["locked_by"] == "live-1"


def test_job_list_filters_and_pages(worked: App) -> None:
    for n in range(5):
        worked.defer("ok", {"n": n}, queue="q1", run_at=FUTURE)
    client = create_dashboard(worked, page_size=2).test_client()

    def ids(query: str) -> list[str]:
        html = client.get(f"/fragments/jobs?{query}", headers=HTMX).get_data(as_text=True)
        return re.findall(r'data-job-id="(\d+)"', html)

    assert len(ids("queue=q1&state=scheduled")) == 2
    first, second, third = (ids(f"queue=q1&page={page}") for page in (1, 2, 3))
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert len(set(first + second + third)) == 5
    boom = client.get("/fragments/jobs?state=permanently_failed", headers=HTMX)
    assert boom.get_data(as_text=True).count('class="job"') == 1
    assert "kaput 7" in boom.get_data(as_text=True)
    assert ids("task=nothing") == []


def test_dashboard_package_imports_without_flask() -> None:
    script = (
        "import sys; sys.modules['flask'] = None\n"
        "import pgworker.dashboard, pgworker.cli\n"
        "print(pgworker.dashboard.StatsPlugin.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "StatsPlugin"


def test_the_command_serves_the_dashboard(
    tmp_path: Path, database_url: str, schema: str, db: Db
) -> None:
    (tmp_path / "dash_app.py").write_text("from pgworker import App\napp = App()\n")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pgworker.cli", "dashboard", "dash_app:app"),
            *("--port", "0", "--database-url", database_url, "--schema", schema),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
    )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        url = wait_for(
            lambda: re.search(r"Dashboard at (http://\S+/)", stdout.readline()),
            30,
            "the dashboard's address",
        )
        with urllib.request.urlopen(url.group(1), timeout=10) as response:
            assert response.status == 200
            assert f"schema {schema}" in response.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
