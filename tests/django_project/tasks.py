"""The test project's Django tasks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

try:  # Django >= 6
    from django.tasks import TaskContext, task
except ImportError:  # the django-tasks backport
    from django_tasks import TaskContext, task  # type: ignore[no-redef]

#: What ran, in order (the tests run the worker in their own process).
RUNS: list[str] = []
_runs_lock = threading.Lock()


class PaymentDeclinedError(Exception):
    """A task's own error, to see its class path in a failed result."""


@task()
def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


@task(queue_name="emails")
def send_email(to: str) -> dict[str, Any]:
    """Pretend to send an email (the only task of the "emails" queue)."""
    with _runs_lock:
        RUNS.append(f"email:{to}")
    return {"sent_to": to}


@task()
def record(name: str) -> str:
    """Note that it ran, in order."""
    with _runs_lock:
        RUNS.append(name)
    return name


@task(takes_context=True)
def flaky(context: TaskContext, word: str) -> dict[str, Any]:
    """Fail on the first attempt, succeed on the next; reports what its context said."""
    if context.attempt < 2:
        raise PaymentDeclinedError(f"declined on attempt {context.attempt}")
    return {"word": word, "attempt": context.attempt, "result_id": context.task_result.id}


@task()
def always_fails(amount: int) -> None:
    """Raise every time."""
    raise PaymentDeclinedError(f"card declined for {amount}")


@task()
async def async_multiply(a: int, b: int) -> int:
    """An async task function."""
    await asyncio.sleep(0)
    return a * b
