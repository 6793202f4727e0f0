"""pgworker.testing: the pytest plugin run on sample test modules in a subprocess (the
one in examples/testing/, the README's), and run_jobs, the assertions and eager mode
tested directly."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from pgworker import App, JobContext, PayloadError, PgWorkerError
from pgworker.testing import (
    JobsFailed,
    RunawayJobsError,
    assert_deferred,
    assert_not_deferred,
    deferred_jobs,
    run_jobs,
)

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "pgworker.testing.plugin"


def run_pytest(cwd: Path, database_url: str | None, *args: str) -> tuple[int, str]:
    """Run pytest in ``cwd`` with the plugin loaded as its entry point would load it;
    return the exit code and the output."""
    installed = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", PLUGIN]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    env["PYTHONPATH"] = str(ROOT)
    if database_url is not None:
        env["PGWORKER_TEST_DATABASE_URL"] = database_url
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def counts(output: str) -> dict[str, int]:
    """The outcome counts of pytest's summary line: {"passed": 4, "failed": 1}."""
    summary = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?)", summary)}


# -- the plugin, as users run it -------------------------------------------------------


def test_the_sample_test_module_passes(database_url: str) -> None:
    code, output = run_pytest(ROOT / "examples" / "testing", database_url)
    assert code == 0, output
    assert counts(output) == {"passed": 4}, output


def test_the_readme_test_module_passes(database_url: str, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    [block] = [b for b in blocks if b.startswith("# test_greetings.py")]
    (tmp_path / "test_greetings.py").write_text(block)
    code, output = run_pytest(tmp_path, database_url)
    assert code == 0, output
    assert counts(output) == {"passed": 2}, output


def test_a_failed_job_shows_its_error_in_the_test_failure(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "test_failing.py").write_text(
        "import pytest\nfrom pgworker import App\napp = App()\n\n"
        "@app.task('charge')\ndef charge(payload: dict) -> None:\n"
        "    raise RuntimeError('card declined: ' + payload['card'])\n\n"
        "@pytest.fixture\ndef pgworker_base_app():\n    return app\n\n"
        "def test_charge(pgworker_jobs):\n    charge.defer({'card': '4242'})\n"
        "    pgworker_jobs.run()\n"
    )
    code, output = run_pytest(tmp_path, database_url)
    assert code == 1, output
    assert counts(output) == {"failed": 1}, output
    assert "JobsFailed: 1 of 1 job(s) failed" in output
    assert "RuntimeError: card declined: 4242" in output
    assert "raise RuntimeError('card declined: ' + payload['card'])" in output  # traceback


def test_the_app_fixture_restores_the_app_and_drops_its_schema(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "test_restore.py").write_text(
        "import os, psycopg, pytest\nfrom pgworker import App\n"
        "app = App(enqueue_schema='my_enqueue')\nused = []\n\n"
        "@pytest.fixture\ndef pgworker_base_app():\n    return app\n\n"
        "def test_moved(pgworker_app):\n"
        "    assert pgworker_app is app and app.is_open and app.schema.startswith('pgw_test_')\n"
        "    assert app.enqueue_schema is None\n"
        "    app.defer('anything', {})  # straight into the test's schema\n"
        "    used.append(app.schema)\n\n"
        "def test_restored():\n"
        "    assert (app.schema, app.is_open) == ('graphile_worker', False)\n"
        "    assert app.database_url is None\n"
        "    assert app.enqueue_schema == 'my_enqueue' and app._schema_given is False\n"
        "    with psycopg.connect(os.environ['PGWORKER_TEST_DATABASE_URL']) as conn:\n"
        "        row = conn.execute('select count(*) from pg_namespace where nspname = %s',\n"
        "                           used).fetchone()\n"
        "    assert row == (0,)\n"
    )
    code, output = run_pytest(tmp_path, database_url)
    assert code == 0, output
    assert counts(output) == {"passed": 2}, output


def test_the_plugin_leaves_other_tests_alone_and_names_its_ini_option(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(
        "def test_plain():\n    assert 1 + 1 == 2\n\n"
        "def test_wants_the_app(pgworker_app):\n    pass\n"
    )
    code, output = run_pytest(tmp_path, None)
    assert counts(output) == {"passed": 1, "error": 1}, output
    assert "name your App in the ini option pgworker_app" in output
    assert code == 1


def test_the_entry_point_names_the_plugin_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"pgworker": PLUGIN}
    module = __import__(PLUGIN, fromlist=["pgworker_app"])
    assert callable(module.pytest_addoption)


# -- run_jobs --------------------------------------------------------------------------


class Order(msgspec.Struct):
    id: int


def test_run_jobs_runs_a_job_and_the_one_it_defers(opened: App) -> None:
    ran: list[tuple[str, int]] = []

    @opened.task("place")
    def place(order: Order, ctx: JobContext) -> None:
        ran.append(("place", order.id))
        ship.defer(Order(id=order.id))

    @opened.task("ship")
    async def ship(order: Order) -> None:
        ran.append(("ship", order.id))

    job = place.defer(Order(id=7))
    result = run_jobs(opened)
    assert ran == [("place", 7), ("ship", 7)]
    assert result.identifiers == ["place", "ship"]
    assert result.ids[0] == job.id
    assert [run.outcome for run in result] == ["completed", "completed"]
    assert result.rounds == 2
    assert deferred_jobs(opened) == []  # both completed, so deleted


def test_run_jobs_runs_a_named_queue_to_the_end(opened: App) -> None:
    ran: list[int] = []

    @opened.task("step", queue="serial")
    def step(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    step.defer_many([{"n": n} for n in range(3)])
    assert len(run_jobs(opened)) == 3
    assert ran == [0, 1, 2]


def test_run_jobs_reports_failures_after_running_the_rest(opened: App) -> None:
    @opened.task("risky")
    def risky(payload: dict[str, Any]) -> None:
        if payload["fail"]:
            raise ValueError(f"bad input {payload['n']}")

    for n, fail in enumerate([False, True, False]):
        risky.defer({"n": n, "fail": fail})
    with pytest.raises(JobsFailed) as caught:
        run_jobs(opened)
    message = str(caught.value)
    assert message.startswith("1 of 3 job(s) failed:")
    assert 'risky {"n":1,"fail":true}: ValueError: bad input 1' in message
    assert "raise ValueError(f\"bad input {payload['n']}\")" in message  # the traceback
    assert len(caught.value.result.completed) == 2
    [left] = assert_deferred(opened, "risky", state="retrying")
    assert left.payload == {"n": 1, "fail": True}
    assert left.job.last_error == "ValueError: bad input 1"
    assert run_jobs(opened).runs == []  # its retry is not due yet


def test_run_jobs_without_raising_returns_the_failures(opened: App) -> None:
    @opened.task("doomed", max_attempts=1)
    def doomed(payload: None) -> None:
        raise RuntimeError("no")

    doomed.defer(None)
    result = run_jobs(opened, raise_on_failure=False)
    assert [(r.outcome, r.error) for r in result.failed] == [
        ("permanently_failed", "RuntimeError: no")
    ]


def test_run_jobs_stops_a_chain_that_never_ends(opened: App, db: psycopg.Connection[Any]) -> None:
    @opened.task("again")
    def again(payload: dict[str, int]) -> None:
        again.defer({"n": payload["n"] + 1})

    again.defer({"n": 0})
    with pytest.raises(RunawayJobsError, match=r"stopped after 5 rounds \(5 jobs run\).*again"):
        run_jobs(opened, max_rounds=5)
    [left] = deferred_jobs(opened)
    assert (left.payload, left.state, left.job.attempts) == ({"n": 5}, "waiting", 0)


def test_run_jobs_needs_an_open_app(app: App) -> None:
    with pytest.raises(PgWorkerError, match="needs an open app"):
        run_jobs(app)


# -- assertions ------------------------------------------------------------------------


def test_assert_deferred_matches_payload_and_options(opened: App) -> None:
    @opened.task("ship")
    def ship(order: Order) -> None: ...

    ship.defer(Order(id=1), queue="post", priority=3, job_key="order-1", flags=["b", "a"])
    ship.defer({"id": 2})
    [found] = assert_deferred(opened, "ship", payload=Order(id=1), queue="post", priority=3)
    assert found.job.key == "order-1"
    assert assert_deferred(opened, "ship", count=2)
    assert assert_deferred(opened, "ship", flags=["a", "b"], job_key="order-1")
    assert assert_deferred(opened, "ship", payload={"id": 2}, queue=None, state="waiting")
    assert_not_deferred(opened, "ship", payload={"id": 3})
    assert_not_deferred(opened, "other")


def test_assert_deferred_failure_lists_what_was_deferred(opened: App) -> None:
    opened.defer("email", {"to": "ada@example.com"}, queue="mail")
    opened.defer("email", {"to": "bob@example.com"})
    with pytest.raises(AssertionError) as caught:
        assert_deferred(opened, "email", payload={"to": "eve@example.com"})
    lines = str(caught.value).splitlines()
    wanted = """of task 'email' with payload {"to":"eve@example.com"}"""
    assert lines[0] == f"no job {wanted} was deferred."
    assert lines[1] == "Deferred jobs (2):"
    assert re.fullmatch(
        r'  #\d+ email \{"to":"ada@example.com"\} \(state=waiting, queue=\'mail\'\)', lines[2]
    )
    with pytest.raises(AssertionError, match=r"2 job\(s\), not 1, of task 'email' was deferred"):
        assert_deferred(opened, "email", count=1)


def test_assert_not_deferred_failure_lists_the_matches(opened: App) -> None:
    opened.defer("email", {"to": "ada@example.com"})
    with pytest.raises(AssertionError, match=r'(?s)1 job\(s\) of task .email. were.*"ada@'):
        assert_not_deferred(opened, "email")


# -- eager mode ------------------------------------------------------------------------


@pytest.fixture
def offline() -> App:
    """An App that could never reach a database: eager mode must not try."""
    return App(database_url="postgresql://nobody@127.0.0.1:1/nothing", embedded=False)


def test_eager_runs_sync_and_async_tasks_inline(offline: App) -> None:
    ran: list[Any] = []

    @offline.task("sync")
    def sync_task(order: Order, ctx: JobContext) -> str:
        ran.append(("sync", order, ctx.job.task_identifier, ctx.job.attempts))
        return "ignored"

    @offline.task("async")
    async def async_task(payload: dict[str, int]) -> None:
        await asyncio.sleep(0)
        ran.append(("async", payload))

    with offline.eager() as mode:
        job = sync_task.defer({"id": 3}, queue="q", priority=2)
        async_task.defer_many([{"n": 1}, {"n": 2}])
        offline.defer("async", {"n": 3})
    assert ran == [
        ("sync", Order(id=3), "sync", 1),  # decoded through the payload type
        ("async", {"n": 1}),
        ("async", {"n": 2}),
        ("async", {"n": 3}),
    ]
    assert (job.task_identifier, job.queue_name, job.priority) == ("sync", "q", 2)
    assert [j.state for j in mode.jobs] == ["completed"] * 4
    assert not offline.is_open


def test_eager_checks_payload_types_and_runs_nothing_on_a_mismatch(offline: App) -> None:
    ran: list[Order] = []

    @offline.task("typed")
    def typed(order: Order) -> None:
        ran.append(order)

    with offline.eager() as mode, pytest.raises(PayloadError, match=r"Expected `int`.*\$\.id"):
        typed.defer({"id": "seven"})
    assert ran == []
    assert mode.jobs == []


def test_eager_runs_deferred_follow_ups_after_their_parent(offline: App) -> None:
    events: list[str] = []

    @offline.task("parent")
    def parent(payload: dict[str, int]) -> None:
        events.append("parent starts")
        child.defer({"n": 1})
        child.defer({"n": 2})
        events.append("parent ends")

    @offline.task("child")
    async def child(payload: dict[str, int]) -> None:
        events.append(f"child {payload['n']}")
        if payload["n"] == 2:
            grandchild.defer({})

    @offline.task("grandchild")
    def grandchild(payload: dict[str, Any]) -> None:
        events.append("grandchild")

    with offline.eager():
        parent.defer({"n": 0})
        assert events == ["parent starts", "parent ends", "child 1", "child 2", "grandchild"]
        assert_deferred(offline, "child", count=2, state="completed")
        assert_deferred(offline, "grandchild", payload={})
        assert_not_deferred(offline, "parent", state="failed")


def test_eager_raises_a_failure_out_of_defer_naming_the_job(offline: App) -> None:
    @offline.task("parent")
    def parent(payload: None) -> None:
        broken.defer(None)

    @offline.task("broken")
    def broken(payload: None) -> None:
        raise KeyError("missing")

    with offline.eager() as mode:
        with pytest.raises(KeyError) as caught:
            parent.defer(None)
        assert caught.value.__notes__ == [
            "(raised by job #2 of task 'broken', run inline by pgworker's eager mode)"
        ]
        assert [(j.state, j.error) for j in mode.jobs] == [
            ("completed", None),
            ("failed", "KeyError: 'missing'"),
        ]


def test_eager_leaves_unknown_tasks_and_stops_endless_chains(offline: App) -> None:
    @offline.task("forever")
    def forever(payload: None) -> None:
        forever.defer(None)

    with offline.eager() as mode:
        offline.defer("node_task", {"a": 1})
        assert [j.state for j in mode.jobs] == ["not_run"]
        mode.max_jobs = 10
        with pytest.raises(PgWorkerError, match="ran 10 jobs for one defer"):
            forever.defer(None)


def test_eager_works_from_inside_an_event_loop(offline: App) -> None:
    ran: list[int] = []

    @offline.task("async")
    async def async_task(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    async def handler() -> None:
        async_task.defer({"n": 1})  # a sync defer from async code: the loop is busy
        await async_task.adefer({"n": 2})

    with offline.eager():
        asyncio.run(handler())
    assert ran == [1, 2]
