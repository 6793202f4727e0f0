"""Sample tests of examples/testing/signup.py with pgworker's pytest plugin.

Run them from this directory (its pytest.ini names the app): ``pytest``, with
PGWORKER_TEST_DATABASE_URL set or an embedded PostgreSQL installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import signup

from pgworker import App
from pgworker.testing import JobsFailed, assert_deferred
from pgworker.testing.plugin import PgWorkerJobs


@pytest.fixture(autouse=True)
def empty_outbox() -> Iterator[None]:
    signup.OUTBOX.clear()
    yield
    signup.OUTBOX.clear()


def test_signing_up_defers_a_welcome(pgworker_jobs: PgWorkerJobs) -> None:
    signup.sign_up("ada@example.com", "Ada")

    pgworker_jobs.assert_deferred(
        "send_welcome", payload=signup.Welcome(email="ada@example.com", name="Ada"), count=1
    )
    pgworker_jobs.assert_not_deferred("send_tips")  # nothing ran yet
    assert signup.OUTBOX == []


def test_the_welcome_runs_with_the_job_it_defers(pgworker_jobs: PgWorkerJobs) -> None:
    signup.sign_up("ada@example.com", "Ada")

    result = pgworker_jobs.run()  # the welcome, then the admins' note it deferred

    assert result.identifiers == ["send_welcome", "notify_admins"]
    assert signup.OUTBOX == ["ada@example.com: Welcome, Ada!", "admins: Ada signed up"]
    # Tomorrow's tips stay in the queue: run() runs only what is due.
    pgworker_jobs.assert_deferred(
        "send_tips", payload={"email": "ada@example.com"}, queue="email", state="scheduled"
    )


def test_a_failing_job_fails_the_run_with_its_error(pgworker_jobs: PgWorkerJobs) -> None:
    signup.sign_up("not-an-address", "Bob")

    with pytest.raises(JobsFailed, match="'not-an-address' is not an email address"):
        pgworker_jobs.run()

    pgworker_jobs.assert_deferred("send_welcome", state="retrying")  # retried later


def test_eager_mode_runs_everything_inline_without_a_database(pgworker_eager: App) -> None:
    signup.sign_up("ada@example.com", "Ada")

    # Even tomorrow's tips: eager mode knows no time, queues or transactions.
    assert signup.OUTBOX == [
        "ada@example.com: Welcome, Ada!",
        "admins: Ada signed up",
        "ada@example.com: Tips for your first day",
    ]
    assert_deferred(pgworker_eager, "send_tips", state="completed")
