"""Cron beside Node graphile-worker 0.17.3: one job per minute between them.

A pgworker CronScheduler and Node's run_worker.js (see tests/interop/node/README.md) run
the same crontab item, ``* * * * * say_hello``, on one schema with real clocks for about
two and a half minutes. They race for every minute; the known_crontabs upsert lets only
one of them add each minute's job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_interop_node import NEWER_REVISION_WARNING

from pgworker import App
from pgworker.cron import Cron, CronItem, CronScheduler
from pgworker.crontab import format_cron_ts
from pgworker.store import Store

NODE_DIR = Path(__file__).parent / "interop" / "node"
_node = shutil.which("node")
if _node is None:
    pytest.skip("node is needed for the cron interop test", allow_module_level=True)
NODE: str = _node
if not (NODE_DIR / "node_modules" / "graphile-worker").is_dir():
    pytest.skip(
        f"graphile-worker is not installed for the interop harness: run `npm ci` in {NODE_DIR}",
        allow_module_level=True,
    )

Conn = psycopg.Connection[tuple[Any, ...]]
TASK = "say_hello"
#: How long both schedulers run: at least two minute boundaries, whenever it starts.
SECONDS = 150

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(SECONDS + 120)]


class RecordingScheduler(CronScheduler):
    """A scheduler that notes which minutes it won."""

    def __init__(self, store: Store, items: list[CronItem]) -> None:
        super().__init__(store, items)
        self.attempted: list[datetime] = []
        self.won: list[datetime] = []

    def schedule_minute(self, ts: datetime, *, backfilled: bool = False) -> list[str]:
        made = super().schedule_minute(ts, backfilled=backfilled)
        self.attempted.append(ts)
        if made:
            self.won.append(ts)
        return made


def test_pgworker_and_node_make_one_job_per_minute_between_them(
    database_url: str, schema: str, opened: App, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    # The schema is migrated (by the fixture) before Node starts, so Node's own migrate
    # is a no-op and sends no worker:migrate notification.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env["INTEROP_CRONTAB"] = f"* * * * * {TASK}"
    stderr: list[str] = []
    ready = threading.Event()
    # Node works on another task only, so every cron job stays in the table to be counted.
    node = subprocess.Popen(
        [NODE, "run_worker.js", database_url, schema, str(SECONDS), "unrelated_task"],
        cwd=NODE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def read_stderr() -> None:
        assert node.stderr is not None
        for line in node.stderr:
            stderr.append(line)
            if "looking for jobs" in line:
                ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    scheduler = RecordingScheduler(opened.store, [Cron.every_minute(TASK).build()])
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    try:
        assert ready.wait(30), "the Node worker never started:\n" + "".join(stderr)
        started = datetime.now(UTC)
        with caplog.at_level(logging.WARNING, logger="pgworker.cron"):
            thread.start()
            code = node.wait(SECONDS + 30)
            stop.set()
            thread.join(30)
        stopped = datetime.now(UTC)
    finally:
        stop.set()
        if node.poll() is None:
            node.kill()
            node.wait()
        reader.join(5)
        if node.stderr is not None:
            node.stderr.close()
    assert code == 0, "".join(stderr)
    assert not thread.is_alive()
    complained = [r.getMessage() for r in caplog.records if r.name == "pgworker.cron"]
    assert not complained
    complaints = [
        line
        for line in stderr
        if ("error" in line.lower() or "warn" in line.lower())
        and NEWER_REVISION_WARNING not in line
    ]
    assert not complaints, "".join(complaints)

    rows = db.execute(
        f"""select jobs.payload::text, jobs.run_at from "{schema}"._private_jobs as jobs
            join "{schema}"._private_tasks as tasks on tasks.id = jobs.task_id
            where tasks.identifier = %s order by jobs.run_at""",
        (TASK,),
    ).fetchall()
    stamps = [json.loads(payload)["_cron"]["ts"] for payload, _ in rows]
    # One job per minute: no minute twice, none skipped, and at least two of them.
    assert len(stamps) >= 2, stamps
    assert Counter(stamps).most_common(1)[0][1] == 1, stamps
    first = datetime.fromisoformat(stamps[0])
    assert stamps == [format_cron_ts(first + timedelta(minutes=i)) for i in range(len(stamps))]
    assert first > started - timedelta(minutes=1)
    assert datetime.fromisoformat(stamps[-1]) <= stopped
    # pgworker tried every minute it was up for; whichever side won, the jobs are the same
    # bytes (the payload JSON is written as compactly as JSON.stringify writes it).
    assert scheduler.attempted, "the pgworker scheduler never reached a minute"
    assert {format_cron_ts(ts) for ts in scheduler.attempted} <= set(stamps)
    for (payload, run_at), stamp in zip(rows, stamps, strict=True):
        assert payload == f'{{"_cron":{{"ts":"{stamp}","backfilled":false}}}}'
        assert run_at == datetime.fromisoformat(stamp)
    last = db.execute(
        f'select last_execution from "{schema}"._private_known_crontabs where identifier = %s',
        (TASK,),
    ).fetchone()
    assert last is not None
    assert format_cron_ts(last[0]) == stamps[-1]
    won = {format_cron_ts(ts) for ts in scheduler.won}
    print(
        f"minutes: {len(stamps)}, made by pgworker: {len(won)}, by Node: {len(stamps) - len(won)}"
    )
