"""Job keys under contention: the keyed-add race (graphile/worker#580) is closed.

Without the fix (add_jobs minus its advisory and row locks) the test below fails with
about a hundred JobNotCreatedError: requests that add_job silently dropped upstream.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from pgworker import App, Job, JobKeyMode, JobNotCreatedError

Conn = psycopg.Connection[tuple[Any, ...]]
KEYS = [f"key-{i}" for i in range(50)]
#: Rounds of defers of every key by each of 8 threads: enough to overlap them with each
#: other and with fetches (20 rounds took 9 s alone and 30-90 s beside other tests).
ROUNDS = 6


def test_concurrent_keyed_defers_while_workers_fetch_lose_nothing(
    make_app: Callable[..., App], db: Conn, schema: str
) -> None:
    app = make_app(concurrency=4, max_pool_size=16)
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    @app.task("keyed")
    def keyed(payload: dict[str, Any]) -> None:
        with lock:
            runs[payload["key"]] += 1

    returned: list[Job] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        for _ in range(ROUNDS):
            for key in KEYS:
                try:
                    job = keyed.defer({"key": key}, job_key=key)
                except BaseException as exc:
                    errors.append(exc)
                else:
                    with lock:
                        returned.append(job)

    with app:
        app.migrate()
        workers = [app.start(), app.start()]
        try:
            threads = [threading.Thread(target=hammer) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            deadline = time.monotonic() + 20
            while db.execute(f'select count(*) from "{schema}".jobs').fetchone() != (0,):
                assert time.monotonic() < deadline, "keyed jobs were left behind"
                time.sleep(0.05)
        finally:
            for handle in workers:
                handle.stop(timeout=5)
    assert errors == []
    assert len(returned) == 8 * ROUNDS * len(KEYS)
    assert all(job.key in KEYS for job in returned)
    # Every key ran at least once, and never more often than it was requested.
    assert set(runs) == set(KEYS)
    assert all(1 <= count <= 8 * ROUNDS for count in runs.values())


T1 = datetime(2100, 1, 1, tzinfo=UTC)
T2 = datetime(2100, 6, 1, tzinfo=UTC)
STATES = {
    "pending": "",
    "retrying": "attempts = 1, last_error = 'boom'",
    "permanently_failed": "attempts = max_attempts, last_error = 'dead'",
    "locked": "attempts = 1, locked_by = 'someone', locked_at = now()",
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("mode", ["replace", "preserve_run_at", "unsafe_dedupe"])
@pytest.mark.gw("ADD-09", "ADD-10", "ADD-11", "ADD-14", "ADD-15", "ADD-16", "EDGE-02")
def test_job_key_modes_row_by_row(
    opened: App, db: Conn, schema: str, state: str, mode: JobKeyMode
) -> None:
    """The reference's job-key table: what a second defer with the same key does."""
    first = opened.defer("t", {"v": 1}, job_key="k", run_at=T1)
    if STATES[state]:
        db.execute(
            f'update "{schema}"._private_jobs set {STATES[state]} where id = %s', (first.id,)
        )
    second = opened.defer("t", {"v": 2}, job_key="k", job_key_mode=mode, run_at=T2)
    rows = {
        r[0]: r[1:]
        for r in db.execute(
            f"select id, key, payload, run_at, attempts, max_attempts, last_error, revision "
            f'from "{schema}"._private_jobs'
        ).fetchall()
    }
    if mode == "unsafe_dedupe":
        # The existing job is returned whatever its state; only its revision moves.
        assert second.id == first.id
        assert len(rows) == 1
        key, payload, run_at, *_, revision = rows[first.id]
        assert (key, payload, run_at, revision) == ("k", {"v": 1}, T1, 1)
    elif state in ("pending", "retrying"):
        # The same row is updated: a debounce (replace) or throttle (preserve_run_at).
        assert second.id == first.id
        assert len(rows) == 1
        key, payload, run_at, attempts, _, last_error, revision = rows[first.id]
        keeps_run_at = mode == "preserve_run_at" and state == "pending"
        assert (key, payload, attempts, last_error, revision) == ("k", {"v": 2}, 0, None, 1)
        assert run_at == (T1 if keeps_run_at else T2)
    else:
        # A running or dead job gives up its key and will never retry; a new job holds it.
        assert second.id != first.id
        assert len(rows) == 2
        old_key, _, _, old_attempts, old_max, *_ = rows[first.id]
        assert (old_key, old_attempts) == (None, old_max)
        assert rows[second.id][:3] == ("k", {"v": 2}, T2)


@pytest.mark.parametrize("mode", ["replace", "preserve_run_at", "unsafe_dedupe"])
@pytest.mark.gw("BJ-01")
def test_array_payloads_merge_under_one_key(
    opened: App, db: Conn, schema: str, mode: JobKeyMode
) -> None:
    opened.defer("batch", [{"id": 1}], job_key="b")
    opened.defer("batch", [{"id": 2}, {"id": 3}], job_key="b", job_key_mode=mode)
    payload = db.execute(f'select payload from "{schema}"._private_jobs').fetchone()
    merged = [{"id": 1}, {"id": 2}, {"id": 3}]
    assert payload == ((merged if mode != "unsafe_dedupe" else [{"id": 1}]),)
    opened.defer("batch", {"not": "an array"}, job_key="b")
    payload = db.execute(f'select payload from "{schema}"._private_jobs').fetchone()
    assert payload == ({"not": "an array"},)  # an object replaces the array


def test_a_row_of_nulls_from_graphile_workers_add_job_is_an_error_not_a_job(
    opened: App, db: Conn, schema: str
) -> None:
    """graphile-worker's own add_job (installed in a database Node migrated, which an
    app that only defers never migrates further) returns a row of NULLs when a worker
    took the keyed job meanwhile (graphile/worker#580). Regression: ``defer`` returned
    a Job whose id was None for a job that was never stored; it raises now."""
    arguments, result = db.execute(
        """select pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = %s and p.proname = 'add_job'""",
        (schema,),
    ).fetchone() or (None, None)
    assert arguments
    assert result
    db.execute(
        f'create or replace function "{schema}".add_job({arguments}) returns {result} '
        f"language sql as $$ select null::{result} $$"
    )
    with pytest.raises(JobNotCreatedError, match="created no 'keyed' job"):
        opened.defer("keyed", {}, job_key="k")
