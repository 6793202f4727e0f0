"""pgworker.contrib.django: a real Django project (tests/django_project) enqueues Django
tasks into the test database, and pgworker workers run them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytest.importorskip("django")
from django.utils import timezone

from pgworker import App

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
WORKER_OPTIONS: dict[str, Any] = {
    "concurrency": 1,
    "poll_interval": 0.2,
    "shutdown_grace_period": 5.0,
}


@pytest.fixture(scope="module")
def django_schema(database_url: str) -> Iterator[str]:
    """Django set up with tests/django_project on the test database and a worker schema of
    this module's own (installed with its results table), dropped afterwards."""
    schema = f"pgw_django_{secrets.token_hex(4)}"
    os.environ["PGWORKER_DJANGO_DATABASE_URL"] = database_url
    os.environ["PGWORKER_DJANGO_SCHEMA"] = schema
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
    import django
    from django.conf import settings

    if settings.configured and settings.TASKS["default"]["OPTIONS"]["SCHEMA"] != schema:
        pytest.skip("Django was set up for another schema in this process")
    django.setup()
    from pgworker.contrib.django.worker import build_worker_app, prepare

    with build_worker_app("default", **WORKER_OPTIONS) as app:
        prepare(app)
    yield schema
    from django.db import connections

    connections.close_all()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{schema}" cascade')
        conn.execute(f'drop schema if exists "{schema}_results" cascade')


@pytest.fixture
def project(django_schema: str, db: psycopg.Connection[tuple[Any, ...]]) -> str:
    """A clean queue and results table for each test; the schema's name."""
    from django_project import tasks

    db.execute(f'delete from "{django_schema}"._private_jobs')
    db.execute(f'delete from "{django_schema}_results".django_task_results')
    tasks.RUNS.clear()
    return django_schema


def run_worker(alias: str = "default", queues: list[str] | None = None) -> str:
    """Run every runnable Django job with a worker of ``alias`` serving ``queues``;
    return the worker's id."""
    from pgworker.contrib.django.worker import build_worker_app

    worker_id = f"django-test-{secrets.token_hex(4)}"
    app: App = build_worker_app(alias, queues, worker_id=worker_id, **WORKER_OPTIONS)
    with app:
        app.run_once(install_signal_handlers=False)
    return worker_id


def job_row(db: psycopg.Connection[tuple[Any, ...]], schema: str, result_id: str) -> Any:
    """(task identifier, queue_name, priority, run_at, attempts, locked_by) of a result's
    job, or None."""
    return db.execute(
        f"""select tasks.identifier, jobs.job_queue_id, jobs.priority, jobs.run_at,
                   jobs.attempts, jobs.locked_by
            from "{schema}"._private_jobs as jobs
            join "{schema}"._private_tasks as tasks on tasks.id = jobs.task_id
            where jobs.key = %s""",
        (f"django:{result_id}",),
    ).fetchone()


def make_runnable(db: psycopg.Connection[tuple[Any, ...]], schema: str, result_id: str) -> None:
    """Bring a waiting job's run_at (a retry's backoff, a run_after) to now."""
    db.execute(
        f'update "{schema}"._private_jobs set run_at = now() where key = %s',
        (f"django:{result_id}",),
    )


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


def test_without_the_results_store_get_result_knows_only_the_job(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django_project import tasks

    from pgworker.contrib.django.compat import TaskResultDoesNotExist
    from pgworker.contrib.django.state import JobError

    result = tasks.flaky.using(backend="no_results").enqueue("x")
    run_worker("no_results")
    result.refresh()
    assert result.status == "READY"
    assert result.attempts == 1
    assert result.errors[0].exception_class is JobError
    assert "PaymentDeclinedError: declined on attempt 1" in result.errors[0].traceback

    make_runnable(db, project, result.id)
    run_worker("no_results")
    assert tasks.RUNS == []
    with pytest.raises(TaskResultDoesNotExist):
        result.refresh()  # done and deleted; nothing was stored
    stored = db.execute(f'select count(*) from "{project}_results".django_task_results')
    assert stored.fetchone() == (0,)


def test_expired_results_are_forgotten_and_deleted(
    project: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from django.db import connection
    from django_project import tasks

    from pgworker.contrib.django.compat import TaskResultDoesNotExist
    from pgworker.contrib.django.results import ResultsStore

    result = tasks.add.enqueue(1, 2)
    run_worker()
    table = f'"{project}_results".django_task_results'
    expires = db.execute(f"select expires_at - finished_at from {table}").fetchone()[0]
    assert expires == timedelta(hours=1)  # RESULTS_TTL of the test project
    db.execute(f"update {table} set expires_at = now() - interval '1 second'")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(result.id)
    store = ResultsStore(project, f"{project}_results", ttl=60)
    connection.ensure_connection()
    assert store.expire_due(connection.connection) == 1
    assert db.execute(f"select count(*) from {table}").fetchone() == (0,)


# -- the management command and the Django 6 leg --------------------------------------------


def test_manage_py_pgworker_runs_the_jobs(project: str, database_url: str) -> None:
    from django_project import tasks

    result = tasks.add.enqueue(20, 22)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS_DIR)]),
        "PGWORKER_DJANGO_DATABASE_URL": database_url,
        "PGWORKER_DJANGO_SCHEMA": project,
    }
    done = subprocess.run(
        [sys.executable, str(TESTS_DIR / "django_project" / "manage.py"), "pgworker", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=TESTS_DIR,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.return_value == 42


def django6_python() -> str | None:
    """An interpreter with Django 6: PGWORKER_DJANGO6_PYTHON, else .venv-django6's."""
    named = os.environ.get("PGWORKER_DJANGO6_PYTHON")
    candidate = named or str(ROOT / ".venv-django6" / "bin" / "python")
    return candidate if named or Path(candidate).exists() else None


def test_django_6_with_its_own_django_tasks(database_url: str) -> None:
    """Django 6 (django.tasks) needs Python >= 3.12: run this module there too."""
    if os.environ.get("PGWORKER_DJANGO6_LEG"):
        pytest.skip("this is the Django 6 leg itself")
    python = django6_python()
    if python is None:
        pytest.skip(
            "Django 6 leg skipped: it needs Python >= 3.12 with Django 6 installed; none was "
            "given (PGWORKER_DJANGO6_PYTHON) or built (`make venv-django6`). Django 5.2 with "
            "the django-tasks backport ran instead"
        )
    probe = subprocess.run(
        [python, "-c", "import django, django.tasks; print(django.get_version())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, f"{python} has no Django 6: {probe.stderr[-1000:]}"
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PGWORKER_TEST_DATABASE_URL": database_url,
            "PGWORKER_DJANGO6_LEG": "1",
        },
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert " failed" not in done.stdout
