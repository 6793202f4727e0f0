"""deferred_jobs, assert_deferred, assert_not_deferred: what a test expects was deferred."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..payload import PayloadCodec
from .records import DeferredJob

if TYPE_CHECKING:
    from ..app import App

#: How many jobs ``deferred_jobs`` reads from the database at most.
MAX_LISTED = 10_000
#: How many non-matching jobs a failure message lists.
MAX_SHOWN = 20
_ANY_CODEC: PayloadCodec[Any] = PayloadCodec(Any)
_UNSET: Any = object()


class _Filter(msgspec.Struct, frozen=True):
    """What the caller asked for: each field left unset matches anything."""

    task: str | None
    payload: Any
    queue: Any
    priority: Any
    max_attempts: Any
    job_key: Any
    flags: Any
    state: Any

    def matches(self, found: DeferredJob) -> bool:
        job = found.job
        checks = (
            (self.task, job.task_identifier),
            (self.payload, found.payload),
            (self.queue, job.queue_name),
            (self.priority, job.priority),
            (self.max_attempts, job.max_attempts),
            (self.job_key, job.key),
            (self.flags, job.flags),
            (self.state, found.state),
        )
        return all(wanted is _UNSET or wanted == actual for wanted, actual in checks)

    def describe(self) -> str:
        parts = [f"of task {self.task!r}" if self.task is not _UNSET else "of any task"]
        if self.payload is not _UNSET:
            parts.append(f"with payload {msgspec.json.encode(self.payload).decode()}")
        for name in ("queue", "priority", "max_attempts", "job_key", "flags", "state"):
            value = getattr(self, name)
            if value is not _UNSET:
                parts.append(f"{name}={value!r}")
        return " ".join(parts)


def deferred_jobs(
    app: App,
    task: str | None = None,
    *,
    payload: Any = _UNSET,
    queue: str | None = _UNSET,
    priority: int = _UNSET,
    max_attempts: int = _UNSET,
    job_key: str | None = _UNSET,
    flags: Sequence[str] | None = _UNSET,
    state: str = _UNSET,
) -> list[DeferredJob]:
    """The jobs of ``app``'s schema (or of its eager mode) that match every filter given,
    oldest first. A filter left out matches anything; ``queue=None`` means "no queue".

    ``payload`` is compared with the stored JSON after going through the task's payload
    type (so a Struct or a dataclass compares with what was stored), exactly: the whole
    payload must be equal. Completed jobs are deleted from the database, so this sees the
    jobs deferred and not yet run (or failed); in eager mode it sees every job deferred.
    """
    wanted = _Filter(
        task=task if task is not None else _UNSET,
        payload=_UNSET if payload is _UNSET else _as_json(app, task, payload),
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        job_key=job_key,
        flags=flags if flags is _UNSET or flags is None else sorted(flags),
        state=state,
    )
    return [found for found in _all_jobs(app, task) if wanted.matches(found)]


def assert_deferred(
    app: App,
    task: str,
    *,
    payload: Any = _UNSET,
    count: int | None = None,
    queue: str | None = _UNSET,
    priority: int = _UNSET,
    max_attempts: int = _UNSET,
    job_key: str | None = _UNSET,
    flags: Sequence[str] | None = _UNSET,
    state: str = _UNSET,
) -> list[DeferredJob]:
    """Assert that a job of ``task`` matching the filters was deferred (``count``: that
    exactly this many were) and return the matching jobs. The failure message lists the
    jobs that were deferred instead. Filters as in ``deferred_jobs``."""
    options = {
        "payload": payload,
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
        "job_key": job_key,
        "flags": flags,
        "state": state,
    }
    found = deferred_jobs(app, task, **options)
    if (count is None and found) or (count is not None and len(found) == count):
        return found
    wanted = _describe_filter(app, task, options)
    expected = "no job" if count is None else f"{len(found)} job(s), not {count},"
    raise AssertionError(f"{expected} {wanted} was deferred.\n{_listing(app)}")


def assert_not_deferred(
    app: App,
    task: str | None = None,
    *,
    payload: Any = _UNSET,
    queue: str | None = _UNSET,
    priority: int = _UNSET,
    max_attempts: int = _UNSET,
    job_key: str | None = _UNSET,
    flags: Sequence[str] | None = _UNSET,
    state: str = _UNSET,
) -> None:
    """Assert that no job matching the filters was deferred (no filter at all: no job of
    any task); the failure message lists the jobs that match."""
    options = {
        "payload": payload,
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
        "job_key": job_key,
        "flags": flags,
        "state": state,
    }
    found = deferred_jobs(app, task, **options)
    if found:
        lines = "\n".join(f"  {job.describe()}" for job in found[:MAX_SHOWN])
        wanted = _describe_filter(app, task, options)
        raise AssertionError(f"{len(found)} job(s) {wanted} were deferred:\n{lines}")


def _describe_filter(app: App, task: str | None, options: dict[str, Any]) -> str:
    payload = options["payload"]
    return _Filter(
        task=_UNSET if task is None else task,
        payload=_UNSET if payload is _UNSET else _as_json(app, task, payload),
        **{name: value for name, value in options.items() if name != "payload"},
    ).describe()


def _listing(app: App) -> str:
    """Every job deferred (up to MAX_SHOWN), one per line, for a failure message."""
    jobs = _all_jobs(app, None)
    if not jobs:
        return "No job at all was deferred."
    lines = [f"Deferred jobs ({len(jobs)}):"]
    lines.extend(f"  {job.describe()}" for job in jobs[:MAX_SHOWN])
    if len(jobs) > MAX_SHOWN:
        lines.append(f"  ... and {len(jobs) - MAX_SHOWN} more")
    return "\n".join(lines)


def _all_jobs(app: App, task: str | None) -> list[DeferredJob]:
    """The jobs of ``task`` (None: of every task), from eager mode or the database."""
    eager = app._eager_mode
    if eager is not None:
        return [j for j in eager.jobs if task is None or j.job.task_identifier == task]
    listed = app.admin.jobs(task=task, limit=MAX_LISTED)
    payloads = app.store.job_payloads([item.job.id for item in listed])
    return [
        DeferredJob(item.job, msgspec.json.decode(payloads[item.job.id]), item.state)
        for item in listed
        if item.job.id in payloads  # not completed since it was listed
    ]


def _as_json(app: App, task: str | None, payload: Any) -> Any:
    """``payload`` as the stored JSON would decode: through the task's type if it has one
    (so a Struct compares equal to the dict stored), else as plain JSON."""
    registered = app.tasks.get(task) if task is not None else None
    codec = registered.codec if registered is not None else _ANY_CODEC
    try:
        return msgspec.json.decode(codec.encode(payload))
    except Exception:  # not a valid payload for the task: it can only match as given
        return msgspec.json.decode(_ANY_CODEC.encode(payload))
