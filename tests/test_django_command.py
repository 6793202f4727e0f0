"""pgworker.contrib.django's worker command, and the whole Django suite under Django 6."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

pytest_plugins = ["django_support"]  # the Django fixtures, set up once per session

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
DJANGO_TESTS = ["test_django.py", "test_django_results.py", "test_django_command.py"]


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
    """Django 6 (django.tasks) needs Python >= 3.12: run the Django tests there too."""
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
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *(str(TESTS_DIR / name) for name in DJANGO_TESTS),
        ],
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
