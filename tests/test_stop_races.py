"""A stop that lands while the worker is busy elsewhere: in a claim, in a lock, in a
job given back and claimed again. Each test pins one interleaving down."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from processes import wait_for
from test_hot_path import claimed

from pgworker import App, Fail, Job, Plugin, runner
from pgworker.completer import Completer
from pgworker.giveback import GiveBack
from pgworker.hooks import Hooks
from pgworker.inflight import InFlight
from pgworker.outcome import Outcome
from pgworker.store import ClaimedJob, Failure

Conn = psycopg.Connection[tuple[Any, ...]]


def test_jobs_a_claim_brings_after_a_stop_go_back_without_running(
    make_app: Callable[..., App], db: Conn, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a stop asked for while a claim was on the wire let the completer (and
    the watch, the heartbeat) end, then an executor still waiting for work started the
    job the claim brought: it ran, its outcome went to no one, and the stop hung until
    forced, leaving a job that had succeeded to run again. Now no job starts once a
    stop is asked for: the claim's jobs go back as they were."""
    monkeypatch.setattr(runner, "IDLE_CHECK", 30.0)  # only the shutdown's markers end them
    holder: list[Any] = []
    trap, sprung = threading.Event(), threading.Event()

    def forbidden() -> None:
        # Called as the claim is built: stop, then hold the claim until the completer
        # has seen the stop with nothing unsettled and ended. The executors, whose wait
        # for work is made long below, are all still there when the claim's jobs come.
        if trap.is_set():
            trap.clear()
            handle = holder[0]
            handle.worker.request_stop()
            completer = f"{handle.worker_id}-completer"
            wait_for(
                lambda: all(t.name != completer for t in threading.enumerate()),
                5,
                "the completer to end",
            )
            sprung.set()

    class SlowFetchedHook(Plugin):
        """Gives the GIL away between two hand-outs (as a hook doing I/O would, or the
        second claim of an app with async tasks)."""

        def on_job_fetched(self, job: Any) -> None:
            time.sleep(0.1)

    # No polls: the claims come from wake-ups only, so none but the trapped one can
    # take the jobs.
    app = make_app(
        concurrency=8, poll_interval=60, forbidden_flags=forbidden, plugins=[SlowFetchedHook()]
    )
    ran: list[int] = []

    @app.task("late")
    def late(payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    with app:
        handle = app.start()
        holder.append(handle)
        fetcher = handle.worker.fetcher
        assert fetcher is not None
        assert handle.worker.wait_listening(10)
        time.sleep(0.2)  # the claim that the LISTEN connection's start wakes
        wait_for(lambda: not fetcher.claims_soon(), 10, "an idle fetcher")
        trap.set()
        jobs = late.defer_many([{"n": 1}, {"n": 2}])
        assert sprung.wait(10)
        t0 = time.monotonic()
        handle.stop(timeout=10)
        stopped_in = time.monotonic() - t0
    assert ran == []
    rows = db.execute(
        f'select id, attempts, locked_by, last_error from "{schema}"._private_jobs order by id'
    ).fetchall()
    assert rows == [(job.id, 0, None, None) for job in jobs]
    assert stopped_in < 8.0  # it hung until forced, 10 s in


def test_a_job_given_back_and_claimed_again_starts_only_as_claimed_again() -> None:
    """A job that a TTL gave back stays in the executors' queue as it was claimed then;
    claimed again (maybe changed meanwhile: a job_key replace), only the new claim may
    start it, not the stale entry ahead of it in the queue."""
    inflight = InFlight(2)
    first = claimed(7)
    inflight.claimed([first])
    assert inflight.expire(time.monotonic() + 1) == [first]
    again = claimed(7)
    inflight.claimed([again])
    assert inflight.start(first, None) is None
    running = inflight.start(again, None)
    assert running is not None
    assert running.job is again.job


def test_no_job_starts_once_a_stop_is_asked_for() -> None:
    inflight = InFlight(2)
    job = claimed(1)
    inflight.claimed([job])
    inflight.stop_starting()
    assert inflight.start(job, None) is None
    assert inflight.close() == [job]
    assert inflight.wait_settled(0)


def test_a_stop_signal_while_the_worker_holds_its_lock_does_not_hang(
    database_url: str, schema: str
) -> None:
    """Regression: the SIGTERM handler called ``request_stop``, which takes the locks
    of InFlight and of threading's Events. Python runs the handler in the main thread,
    the fetcher's, between two bytecodes: landing while the fetcher held one of those
    locks, it waited for itself for ever, and so did a second signal."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pgworker import App
        from pgworker.control import install_stop_signals

        app = App(database_url=sys.argv[1], schema=sys.argv[2])

        @app.task("t")
        def t(payload): ...

        with app:
            app.migrate()
            worker = app._worker()
            restore = install_stop_signals(worker)
            with worker.inflight._changed:  # what room() and claimed() hold
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between these bytecodes
                    pass
            assert worker._stop.wait(10), "the stop was never carried out"
            restore()
        print("stopped")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, database_url, schema],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


def test_error_texts_postgresql_cannot_take_are_stored_escaped_and_block_no_batch(
    make_app: Callable[..., App], db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a lone surrogate in an error text (bytes decoded with
    ``surrogateescape``) made psycopg raise UnicodeEncodeError, not a database error:
    the completer dropped the whole batch of failures as if written, and their jobs
    stayed locked by a live worker. Task code's errors are escaped now; a plugin's
    ``Fail`` text is stored in a plain replacement, and the rest of its batch as is."""

    class FailOddly(Plugin):
        def before_job_run(self, job: Any, payload: Any) -> Fail | None:
            return Fail("plugin says \udcfe") if job.task_identifier == "vetoed" else None

    # The failures' log lines hold the surrogates, which pytest-xdist can't send back.
    caplog.set_level(logging.CRITICAL, logger="pgworker")
    app = make_app(fail_batch_delay=0.3, plugins=[FailOddly()])

    @app.task("odd")
    def odd(payload: dict[str, Any]) -> None:
        raise ValueError("bad \udcff name")

    @app.task("plain")
    def plain(payload: dict[str, Any]) -> None:
        raise ValueError("ordinary")

    @app.task("vetoed")
    def vetoed(payload: dict[str, Any]) -> None: ...

    with app:
        app.migrate()
        ids = [odd.defer({}).id, plain.defer({}).id, vetoed.defer({}).id]
        app.run_once()
    rows = db.execute(
        f'select id, attempts, locked_by, last_error from "{schema}"._private_jobs order by id'
    ).fetchall()
    assert [row[:3] for row in rows] == [(i, 1, None) for i in ids]
    assert [row[3] for row in rows] == [
        "ValueError: bad \\udcff name",
        "ValueError: ordinary",
        "pgworker could not store this job's error (UnicodeEncodeError)",
    ]


def claim_jobs(app: App, worker_id: str, limit: int) -> list[ClaimedJob]:
    """Claim up to ``limit`` jobs of the task ``job`` for ``worker_id`` straight through
    the store (as a fetcher would), in id order."""
    task_names = {app.store.register_tasks(["job"]).popitem()[0]: "job"}
    claimed = app.store.claim_jobs(worker_id=worker_id, task_names=task_names, limit=limit)
    return sorted(claimed, key=lambda c: c.job.id)


def test_a_failure_written_again_leaves_the_next_claim_of_its_job_alone(
    opened: App, db: Conn, schema: str
) -> None:
    """Regression: the completer writes a batch again when its answer was lost, and the
    failure statement matched any lock of this worker. If the first write had gone
    through and this worker had claimed the job again since (a retry delay of 0, a
    snooze), the second write unlocked that new, running attempt (and its queue): any
    worker could then start the job a second time. A failure now names the lock its
    run held (locked_at), and touches no other."""
    job = opened.task("job")(lambda payload: None)
    job.defer({}, queue="serial")
    store = opened.store

    def claim() -> Job:
        (claimed_job,) = claim_jobs(opened, "w1", 1)
        return claimed_job.job

    first = claim()
    failure = Failure(first.id, "boom", delay=0.0, locked_at=first.locked_at)
    store.fail_jobs([failure], worker_id="w1")  # went through; its answer was lost
    second = claim()
    assert second.locked_at != first.locked_at
    store.fail_jobs([failure], worker_id="w1")  # the retry
    row = db.execute(
        f'select attempts, locked_by, locked_at from "{schema}"._private_jobs'
    ).fetchone()
    assert row == (2, "w1", second.locked_at)
    queue = db.execute(f'select locked_by from "{schema}"._private_job_queues').fetchone()
    assert queue == ("w1",)


def test_a_give_back_written_again_leaves_the_next_claim_of_its_job_alone(
    opened: App, db: Conn, schema: str
) -> None:
    """The same for an interrupted job given back by the completer: its retry names the
    lock the interrupted run held."""
    job = opened.task("job")(lambda payload: None)
    job.defer({})
    store = opened.store

    def claim() -> Job:
        (claimed_job,) = claim_jobs(opened, "w1", 1)
        return claimed_job.job

    first = claim()

    def give_back() -> None:
        store.return_jobs([first.id], worker_id="w1", locked_ats=[first.locked_at])

    give_back()  # went through; its answer was lost
    second = claim()
    give_back()  # the retry
    row = db.execute(
        f'select attempts, locked_by, locked_at from "{schema}"._private_jobs'
    ).fetchone()
    assert row == (1, "w1", second.locked_at)


def test_a_success_the_database_refuses_to_record_fails_saying_so(
    opened: App, db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A completion the database refuses (here a trigger; a permission would do) is
    recorded as a failure that says the success could not be stored (it said "error",
    for a job that had none), and the job is retried as failures are."""
    db.execute(
        f"""create function "{schema}".refuse_delete() returns trigger language plpgsql
        as $$ begin raise exception 'deleting jobs is off today'; end $$;
        create trigger refuse_delete before delete on "{schema}"._private_jobs
        for each row execute function "{schema}".refuse_delete()"""
    )
    caplog.set_level(logging.CRITICAL, logger="pgworker")
    fine = opened.task("fine")(lambda payload: None)
    job = fine.defer({})
    opened.run_once()
    row = db.execute(
        f'select attempts, locked_by, last_error from "{schema}"._private_jobs where id = %s',
        (job.id,),
    ).fetchone()
    assert row == (1, None, "pgworker could not store this job's success (DatabaseError)")


def test_an_exit_with_jobs_unrecorded_also_releases_locks_the_worker_did_not_know_of(
    opened: App, db: Conn, schema: str
) -> None:
    """The exit hook gives back the jobs the worker holds, and (as a clean stop does)
    releases whatever else is locked in its name: a claim whose answer was lost, a
    give-back that failed. Regression: those were left to the four-hour reset."""
    job = opened.task("job")(lambda payload: None)
    job.defer_many([{"n": 1}, {"n": 2}])
    store = opened.store
    held, unknown = claim_jobs(opened, "w-exit", 2)
    inflight = InFlight(2)
    inflight.claimed([held])  # the worker never heard of `unknown`
    GiveBack(store, opened.conninfo, "w-exit", 0.0).at_exit(inflight, registered=False)
    rows = db.execute(
        f'select id, attempts, locked_by from "{schema}"._private_jobs order by id'
    ).fetchall()
    assert rows == [(held.job.id, 0, None), (unknown.job.id, 1, None)]


def test_an_outcome_refused_even_as_a_plain_failure_holds_back_no_other(
    opened: App, db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch the database refuses is written outcome by outcome; one refused even as
    its plain replacement failure stays locked (and says so in the log), and the ones
    after it in the batch are still written. Regression: that last refusal ended the
    loop, and the rest of the batch counted as written."""
    job = opened.task("job")(lambda payload: None)
    job.defer_many([{"n": n} for n in range(3)])
    store = opened.store
    claimed_jobs = claim_jobs(opened, "w1", 3)
    stuck = claimed_jobs[1].job.id
    db.execute(
        f"""create function "{schema}".refuse() returns trigger language plpgsql
        as $$ begin raise exception 'job {stuck} is read-only today'; end $$;
        create trigger refuse before delete or update on "{schema}"._private_jobs
        for each row when (old.id = {stuck}) execute function "{schema}".refuse()"""
    )
    inflight = InFlight(3)
    inflight.claimed(claimed_jobs)
    completer = Completer(store, opened.conninfo, "w1", Hooks(), inflight, on_settled=lambda: None)
    caplog.set_level(logging.CRITICAL, logger="pgworker")
    completer._flush([Outcome(c.job, 1.0) for c in claimed_jobs])
    completer._conn.close()
    left = db.execute(f'select id, locked_by from "{schema}"._private_jobs').fetchall()
    assert left == [(stuck, "w1")]
