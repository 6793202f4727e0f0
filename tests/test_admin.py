"""The admin API on jobs in every state, with graphile-worker's 4-hour rule for locks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from pgworker import App, ConfigurationError, StatRow

Conn = psycopg.Connection[tuple[Any, ...]]


def rows(db: Conn, schema: str) -> dict[int, tuple[Any, ...]]:
    found = db.execute(
        f"select id, attempts, max_attempts, last_error, key, locked_by, priority, run_at "
        f'from "{schema}".jobs'
    ).fetchall()
    return {row[0]: row[1:] for row in found}


def test_states_and_stats(opened: App, selection: dict[str, int]) -> None:
    admin = opened.admin
    states = {listed.job.id: listed.state for listed in admin.jobs()}
    assert states == {
        selection["waiting"]: "waiting",
        selection["scheduled"]: "scheduled",
        selection["retrying"]: "retrying",
        selection["failed"]: "permanently_failed",
        selection["running"]: "running",
        selection["stale"]: "running",
    }
    assert [j.job.id for j in admin.jobs(state="retrying")] == [selection["retrying"]]
    assert [j.job.id for j in admin.jobs(task="job_c", queue="q3")] == [selection["running"]]
    assert [j.job.id for j in admin.jobs(job_key="key-failed")] == [selection["failed"]]
    assert len(admin.jobs(limit=2)) == 2
    one = admin.job(selection["scheduled"])
    assert one is not None
    assert (one.job.queue_name, one.job.key, one.state) == ("q1", "key-scheduled", "scheduled")
    assert admin.job(10**9) is None
    assert admin.payload(selection["waiting"]) == {"name": "waiting"}
    assert StatRow("job_b", "q2", "permanently_failed", 1) in admin.stats()
    assert sum(row.count for row in admin.stats()) == 6
    with pytest.raises(ConfigurationError, match="state must be one of"):
        admin.jobs(state="lost")  # type: ignore[arg-type]


@pytest.mark.gw("ADM-01", "EDGE-06")
def test_complete_jobs_spares_recently_locked_ones(
    opened: App, selection: dict[str, int], db: Conn, schema: str
) -> None:
    done = opened.admin.complete_jobs(list(selection.values()))
    assert sorted(j.id for j in done) == sorted(
        i for name, i in selection.items() if name != "running"
    )
    assert {j.task_identifier for j in done} == {"job_a", "job_b", "job_c"}
    assert list(rows(db, schema)) == [selection["running"]]


@pytest.mark.gw("ADM-02")
def test_permanently_fail_jobs(
    opened: App, selection: dict[str, int], db: Conn, schema: str
) -> None:
    changed = opened.admin.permanently_fail_jobs(
        [selection["waiting"], selection["running"], selection["retrying"]], "Gave up"
    )
    assert sorted(j.id for j in changed) == sorted([selection["waiting"], selection["retrying"]])
    after = rows(db, schema)
    for name in ("waiting", "retrying"):
        attempts, max_attempts, last_error, *_ = after[selection[name]]
        assert (attempts, last_error) == (max_attempts, "Gave up")
    assert after[selection["running"]][2] is None  # untouched
    default = opened.admin.permanently_fail_jobs([selection["scheduled"]])
    assert default[0].last_error == "Manually marked as failed"


@pytest.mark.gw("ADM-03")
def test_reschedule_jobs_takes_zero_as_a_value(
    opened: App, selection: dict[str, int], db: Conn, schema: str
) -> None:
    when = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    targets = [selection["failed"], selection["retrying"], selection["running"]]
    opened.admin.reschedule_jobs(targets, priority=5)
    changed = opened.admin.reschedule_jobs(
        targets, run_at=when, priority=0, attempts=0, max_attempts=3
    )
    assert sorted(j.id for j in changed) == sorted(targets[:2])
    after = rows(db, schema)
    for target in targets[:2]:
        attempts, max_attempts, _, _, _, priority, run_at = after[target]
        assert (attempts, max_attempts, priority, run_at) == (0, 3, 0, when)
    assert after[selection["running"]][5] == 0  # priority unchanged: it was locked
    with pytest.raises(ConfigurationError, match="max_attempts"):
        opened.admin.reschedule_jobs(targets, max_attempts=0)
    with pytest.raises(ConfigurationError, match=r"priority must be an int .*got 'high' \(str\)"):
        opened.admin.reschedule_jobs(targets, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="run_at must be a timezone-aware datetime"):
        opened.admin.reschedule_jobs(targets, run_at="tomorrow")  # type: ignore[arg-type]


@pytest.mark.gw("ADD-19", "ADD-20")
def test_remove_job_deletes_pending_and_disarms_running(
    opened: App, selection: dict[str, int], db: Conn, schema: str
) -> None:
    removed = opened.admin.remove_job("key-waiting")
    assert removed is not None
    assert removed.id == selection["waiting"]
    disarmed = opened.admin.remove_job("key-running")
    assert disarmed is not None
    assert (disarmed.key, disarmed.attempts) == (None, disarmed.max_attempts)
    assert opened.admin.remove_job("no-such-key") is None
    after = rows(db, schema)
    assert selection["waiting"] not in after
    assert after[selection["running"]][3] is None  # key cleared, row kept while it runs


@pytest.mark.gw("ADM-04", "EDGE-06")
def test_force_unlock_workers_frees_jobs_and_queues(
    opened: App, selection: dict[str, int], db: Conn, schema: str
) -> None:
    assert opened.admin.force_unlock_workers(["test"]) == 1
    assert rows(db, schema)[selection["running"]][4] is None
    queue = db.execute(
        f"select locked_by from \"{schema}\"._private_job_queues where queue_name = 'q3'"
    ).fetchone()
    assert queue == (None,)
    assert rows(db, schema)[selection["stale"]][4] == "gone"  # another worker's lock stays


@pytest.mark.gw("ADM-05", "ADM-06", "EDGE-06")
def test_cleanup(opened: App, selection: dict[str, int], db: Conn, schema: str) -> None:
    opened.admin.complete_jobs([selection["scheduled"], selection["waiting"]])
    result = opened.admin.cleanup(
        delete_permanently_failed_jobs=True,
        gc_job_queues=True,
        gc_task_identifiers=True,
        task_identifiers_to_keep=["job_a"],
    )
    assert result.permanently_failed_jobs == 1
    assert result.job_queues == 2  # q1 (emptied) and q2 (its job deleted); q3 is locked
    assert result.task_identifiers == 0  # job_a kept, job_b and job_c still used
    names = db.execute(f'select identifier from "{schema}"._private_tasks order by 1').fetchall()
    assert [n[0] for n in names] == ["job_a", "job_b", "job_c"]
    assert opened.admin.cleanup() == type(result)()
