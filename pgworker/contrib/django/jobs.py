"""How a Django task becomes a pgworker job: identifier, job key, payload and priority."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from .options import IDENTIFIER_PREFIX, JOB_KEY_PREFIX


class DjangoJob(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a Django task's job: which task function (its dotted path) to call
    with which arguments, for which result, as enqueued (backend alias, Django queue and
    priority, run_after)."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    result_id: str
    backend: str
    queue_name: str
    priority: int
    run_after: datetime | None = None


def task_identifier(queue_name: str) -> str:
    """The pgworker task identifier of a Django queue's jobs: ``django:<queue_name>``.

    A worker serves a Django queue by registering its identifier, so graphile-worker's
    fetch (which claims only jobs of the tasks a worker knows) does the routing; the
    jobs go in no named queue, so they run in parallel.
    """
    return f"{IDENTIFIER_PREFIX}{queue_name}"


def job_key(result_id: str) -> str:
    """The job key of a result's job: ``django:<result id>``, unique per enqueue, so that
    the job can be found by its result id while graphile-worker holds it."""
    return f"{JOB_KEY_PREFIX}{result_id}"


def to_graphile_priority(django_priority: int) -> int:
    """Django's priority (-100 to 100, higher runs first) as graphile-worker's (lower runs
    first): its negation. The order is kept exactly, and 0 stays 0, so Django jobs and
    other pgworker jobs of the same urgency interleave."""
    return -django_priority


def to_django_priority(graphile_priority: int) -> int:
    """The inverse of ``to_graphile_priority``."""
    return -graphile_priority
