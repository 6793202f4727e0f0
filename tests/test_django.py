"""pgworker.contrib.django: a real Django project (tests/django_project) enqueues Django
tasks into the test database, and pgworker workers run them."""

from __future__ import annotations

from contextlib import suppress
from datetime import timedelta
from typing import Any

import psycopg
import pytest

pytest.importorskip("django")
pytest.register_assert_rewrite("django_support")
from django.utils import timezone  # noqa: E402
from django_support import job_row, make_runnable, run_worker  # noqa: E402

pytest_plugins = ["django_support"]  # the Django fixtures, set up once per session


# -- acceptance: view -> worker, atomic(), get_result ---------------------------------------


def test_a_view_enqueues_and_the_worker_runs_the_task(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.test import Client
    from django_project import tasks

    client = Client()
    response = client.get("/add", {"a": 2, "b": 3})
    assert response.status_code == 202, response.content
    result_id = response.json()["id"]
    assert response.json()["status"] == "READY"
    identifier, queue_id, _, _, attempts, _ = job_row(db, project, result_id)
    assert (identifier, queue_id, attempts) == ("django:default", None, 0)
    assert client.get(f"/results/{result_id}").json() == {"status": "READY", "attempts": 0}

    worker_id = run_worker()

    assert client.get(f"/results/{result_id}").json() == {
        "status": "SUCCESSFUL",
        "attempts": 1,
        "return_value": 5,
    }
    result = tasks.add.get_result(result_id)
    assert result.status == "SUCCESSFUL"
    assert result.return_value == 5
    assert result.worker_ids == [worker_id]
    assert result.args == [2, 3]
    assert result.kwargs == {}
    assert result.enqueued_at is not None
    assert result.started_at is not None
    assert result.finished_at is not None
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.errors == []
    assert job_row(db, project, result_id) is None  # graphile-worker deleted the job


def test_inside_atomic_the_job_is_visible_and_a_rollback_removes_it(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.db import connection, transaction
    from django_project import tasks

    from pgworker.contrib.django.compat import TaskResultDoesNotExist

    class Rollback(Exception):
        pass

    with suppress(Rollback), transaction.atomic():
        result = tasks.add.enqueue(1, 1)
        with connection.cursor() as cursor:
            cursor.execute(
                f'select count(*) from "{project}"._private_jobs where key = %s',
                [f"django:{result.id}"],
            )
            assert cursor.fetchone()[0] == 1  # in Django's open transaction
        assert job_row(db, project, result.id) is None  # not committed: no one else sees it
        assert tasks.add.get_result(result.id).status == "READY"
        raise Rollback

    assert job_row(db, project, result.id) is None
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(result.id)
    run_worker()
    assert tasks.RUNS == []


def test_a_committed_atomic_block_keeps_its_job(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.db import transaction
    from django_project import tasks

    with transaction.atomic():
        result = tasks.add.enqueue(4, 4)
    assert job_row(db, project, result.id) is not None
    run_worker()
    assert tasks.add.get_result(result.id).return_value == 8


def test_a_view_whose_transaction_rolls_back_leaves_no_job(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.test import Client

    response = Client().get("/add", {"a": 1, "b": 2, "fail": 1})
    assert response.status_code == 409
    assert job_row(db, project, response.json()["id"]) is None
    assert db.execute(f'select count(*) from "{project}"._private_jobs').fetchone() == (0,)


def test_get_result_reports_a_retry_in_progress_then_success(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    result = tasks.flaky.enqueue("hello")
    first = run_worker()

    result.refresh()
    assert result.status == "READY"  # failed once, waiting for its retry
    assert not result.is_finished
    assert result.attempts == 1
    assert result.worker_ids == [first]
    assert len(result.errors) == 1
    assert result.errors[0].exception_class is tasks.PaymentDeclinedError
    assert "declined on attempt 1" in result.errors[0].traceback
    assert result.finished_at is None
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    assert job_row(db, project, result.id)[4] == 1  # the job itself: attempts 1

    make_runnable(db, project, result.id)
    second = run_worker()

    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.attempts == 2
    assert result.worker_ids == [first, second]
    # takes_context: the task saw its attempt number and its result id.
    assert result.return_value == {"word": "hello", "attempt": 2, "result_id": result.id}
    assert [e.exception_class for e in result.errors] == [tasks.PaymentDeclinedError]


def test_get_result_reports_a_failure_with_the_exception(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    result = tasks.always_fails.using(backend="no_retries").enqueue(10)
    run_worker()

    fetched = tasks.always_fails.get_result(result.id)
    assert fetched.status == "FAILED"
    assert fetched.is_finished
    assert fetched.backend == "no_retries"
    assert fetched.attempts == 1
    assert fetched.finished_at is not None
    assert len(fetched.errors) == 1
    assert fetched.errors[0].exception_class is tasks.PaymentDeclinedError
    assert "card declined for 10" in fetched.errors[0].traceback
    with pytest.raises(ValueError, match="failed"):
        _ = fetched.return_value
    # graphile-worker keeps a permanently failed job: attempts used up.
    assert job_row(db, project, result.id)[4] == 1


def test_get_result_reports_running_while_the_job_is_locked(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    result = tasks.add.enqueue(1, 2)
    # A worker elsewhere has claimed it (as graphile-worker's fetch does).
    db.execute(
        f"""update "{project}"._private_jobs
            set locked_at = now(), locked_by = 'elsewhere', attempts = 1 where key = %s""",
        (f"django:{result.id}",),
    )
    result.refresh()
    assert result.status == "RUNNING"
    assert result.worker_ids == ["elsewhere"]


# -- the rest of the Django API -----------------------------------------------------------


def test_an_async_task_function_runs(project: str) -> None:
    from django_project import tasks

    result = tasks.async_multiply.enqueue(6, 7)
    run_worker()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.return_value == 42


def test_higher_django_priority_runs_first(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    from pgworker.contrib.django.jobs import to_django_priority, to_graphile_priority

    results = {
        priority: tasks.record.using(priority=priority).enqueue(f"p{priority}")
        for priority in (0, -100, 100, 50, -5)
    }
    for priority, result in results.items():
        assert job_row(db, project, result.id)[2] == to_graphile_priority(priority) == -priority
        assert to_django_priority(-priority) == priority
    run_worker()  # one at a time (concurrency 1)
    assert tasks.RUNS == ["p100", "p50", "p0", "p-5", "p-100"]


def test_a_worker_can_serve_one_django_queue_only(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    email = tasks.send_email.enqueue("ada@example.com")
    total = tasks.add.enqueue(5, 5)
    assert job_row(db, project, email.id)[0] == "django:emails"

    run_worker(queues=["emails"])

    assert tasks.RUNS == ["email:ada@example.com"]
    email.refresh()
    assert email.return_value == {"sent_to": "ada@example.com"}
    total.refresh()
    assert total.status == "READY"
    assert job_row(db, project, total.id)[4] == 0  # never claimed by the emails worker
    run_worker(queues=["default"])
    total.refresh()
    assert total.return_value == 10


def test_django_queues_are_not_serial_named_queues(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    result = tasks.add.enqueue(1, 1)
    assert job_row(db, project, result.id)[1] is None  # no job_queue: jobs run in parallel


def test_run_after_delays_the_job(project: str, db: psycopg.Connection[tuple[Any, ...]]) -> None:
    from django_project import tasks

    when = timezone.now() + timedelta(hours=1)
    result = tasks.record.using(run_after=when).enqueue("later")
    assert job_row(db, project, result.id)[3] == when
    run_worker()
    assert tasks.RUNS == []
    result.refresh()
    assert result.status == "READY"
    assert result.task.run_after == when

    make_runnable(db, project, result.id)
    run_worker()
    assert tasks.RUNS == ["later"]


def test_without_a_shared_connection_the_job_is_added_on_commit(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.db import connection, transaction
    from django_project import tasks

    class Rollback(Exception):
        pass

    on_commit = tasks.add.using(backend="on_commit")
    with transaction.atomic():
        kept = on_commit.enqueue(3, 3)
        with connection.cursor() as cursor:
            cursor.execute(f'select count(*) from "{project}"._private_jobs')
            assert cursor.fetchone()[0] == 0  # not yet: it waits for the commit
    assert job_row(db, project, kept.id) is not None
    with suppress(Rollback), transaction.atomic():
        dropped = on_commit.enqueue(4, 4)
        raise Rollback
    assert job_row(db, project, dropped.id) is None
    run_worker()
    assert tasks.add.get_result(kept.id).return_value == 6
