"""JobSpec: the options a job is deferred with, checked before anything is sent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from .errors import ConfigurationError

JobKeyMode = Literal["replace", "preserve_run_at", "unsafe_dedupe"]
JOB_KEY_MODES: tuple[JobKeyMode, ...] = ("replace", "preserve_run_at", "unsafe_dedupe")

SMALLINT_MIN, SMALLINT_MAX = -32768, 32767
MAX_QUEUE_NAME_LENGTH = 128
MAX_JOB_KEY_LENGTH = 512


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a job is scheduled: every field left as None takes the database default.

    - ``queue``: a named queue; its jobs run one at a time, by (priority, run_at).
    - ``run_at``: the earliest time to run (timezone-aware); default now.
    - ``priority``: lower runs first; default 0.
    - ``max_attempts``: default 25.
    - ``job_key`` and ``job_key_mode``: at most one pending job per key; see the README.
    - ``flags``: labels a worker can refuse with ``forbidden_flags``.
    """

    queue: str | None = None
    run_at: datetime | None = None
    priority: int | None = None
    max_attempts: int | None = None
    job_key: str | None = None
    job_key_mode: JobKeyMode | None = None
    flags: Sequence[str] | None = None

    def merge(self, overrides: JobSpec) -> JobSpec:
        """These options as defaults, under ``overrides`` (whose None fields keep ours);
        validated."""
        fields = {
            name: getattr(overrides, name)
            if getattr(overrides, name) is not None
            else getattr(self, name)
            for name in self.__struct_fields__
        }
        return JobSpec(**fields).validate()

    def validate(self) -> JobSpec:
        """Return self, or raise ConfigurationError naming the first bad option."""
        if self.queue is not None and not 0 < len(self.queue) <= MAX_QUEUE_NAME_LENGTH:
            raise ConfigurationError(
                f"queue must be 1 to {MAX_QUEUE_NAME_LENGTH} characters, got {len(self.queue)}"
            )
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ConfigurationError(
                "run_at must be timezone-aware, e.g. datetime.now(timezone.utc) + timedelta(...)"
            )
        if self.priority is not None and not SMALLINT_MIN <= self.priority <= SMALLINT_MAX:
            raise ConfigurationError(
                f"priority must be between {SMALLINT_MIN} and {SMALLINT_MAX}, got {self.priority}"
            )
        if self.max_attempts is not None and not 1 <= self.max_attempts <= SMALLINT_MAX:
            raise ConfigurationError(
                f"max_attempts must be between 1 and {SMALLINT_MAX}, got {self.max_attempts}"
            )
        if self.job_key is not None and not 0 < len(self.job_key) <= MAX_JOB_KEY_LENGTH:
            raise ConfigurationError(
                f"job_key must be 1 to {MAX_JOB_KEY_LENGTH} characters, got {len(self.job_key)}"
            )
        if self.job_key_mode is not None:
            if self.job_key_mode not in JOB_KEY_MODES:
                raise ConfigurationError(
                    f"job_key_mode must be one of {', '.join(JOB_KEY_MODES)}, "
                    f"got {self.job_key_mode!r}"
                )
            if self.job_key is None:
                raise ConfigurationError("job_key_mode needs a job_key")
        if self.flags is not None and (
            isinstance(self.flags, str) or not all(isinstance(f, str) for f in self.flags)
        ):
            raise ConfigurationError("flags must be a list of strings")
        return self


@dataclass(frozen=True, slots=True)
class RawJob:
    """One job of a mixed batch for ``App.defer_raw``: a task identifier, a payload (any
    JSON value, ``{}`` by default, checked against the task's type when the task is
    registered on the app) and the same options as ``defer``."""

    identifier: str
    payload: Any = field(default_factory=dict)
    _: KW_ONLY
    queue: str | None = None
    run_at: datetime | None = None
    priority: int | None = None
    max_attempts: int | None = None
    job_key: str | None = None
    job_key_mode: JobKeyMode | None = None
    flags: Sequence[str] | None = None

    @property
    def spec(self) -> JobSpec:
        """The options as a JobSpec."""
        return JobSpec(
            queue=self.queue,
            run_at=self.run_at,
            priority=self.priority,
            max_attempts=self.max_attempts,
            job_key=self.job_key,
            job_key_mode=self.job_key_mode,
            flags=self.flags,
        )
