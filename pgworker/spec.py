"""JobSpec: the options a job is deferred with, checked before anything is sent."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from .errors import ConfigurationError

JobKeyMode = Literal["replace", "preserve_run_at", "unsafe_dedupe"]
JOB_KEY_MODES: tuple[JobKeyMode, ...] = ("replace", "preserve_run_at", "unsafe_dedupe")

SMALLINT_MIN, SMALLINT_MAX = -32768, 32767
MAX_IDENTIFIER_LENGTH = 128
MAX_QUEUE_NAME_LENGTH = 128
MAX_JOB_KEY_LENGTH = 512
#: The task identifiers ``App.task`` registers and a crontab line may name: a letter or _,
#: then letters, digits and _ : / . - (graphile-worker's own crontab parser refuses the dot).
TASK_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_:/.\-]*")


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a job is scheduled: every field left as None takes the database default.

    - ``queue``: a named queue; its jobs run one at a time, by (priority, run_at).
    - ``run_at``: the earliest time to run (timezone-aware); default now.
    - ``delay``: or, instead of ``run_at``, how long from now (seconds or a timedelta),
      by this process's clock; ``merge`` turns it into ``run_at``.
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
    delay: float | timedelta | None = None

    def merge(self, overrides: JobSpec) -> JobSpec:
        """These options as defaults, under ``overrides`` (whose None fields keep ours);
        validated, with a ``delay`` turned into ``run_at`` (so the spec the store and the
        plugins see has a time, not a duration)."""
        if overrides.run_at is not None or overrides.delay is not None:
            # A caller's time replaces a default one, whichever way each was given.
            base = msgspec.structs.replace(self, run_at=None, delay=None)
        else:
            base = self
        fields = {
            name: getattr(overrides, name)
            if getattr(overrides, name) is not None
            else getattr(base, name)
            for name in self.__struct_fields__
        }
        merged = JobSpec(**fields).validate()
        if merged.delay is None:
            return merged
        run_at = datetime.now(UTC) + _as_timedelta(merged.delay)
        return msgspec.structs.replace(merged, run_at=run_at, delay=None)

    def validate(self) -> JobSpec:
        """Return self, or raise ConfigurationError naming the first bad option, its value
        and what it accepts."""
        if self.queue is not None:
            _check_text("queue", self.queue, MAX_QUEUE_NAME_LENGTH)
        if self.run_at is not None:
            check_run_at(self.run_at)
        if self.delay is not None:
            check_delay("delay", self.delay)
            if self.run_at is not None:
                raise ConfigurationError(
                    "give run_at or delay, not both: run_at is a time, delay a duration from now"
                )
        if self.priority is not None:
            check_smallint("priority", self.priority, SMALLINT_MIN)
        if self.max_attempts is not None:
            check_smallint("max_attempts", self.max_attempts, 1)
        if self.job_key is not None:
            _check_text("job_key", self.job_key, MAX_JOB_KEY_LENGTH)
        if self.job_key_mode is not None:
            if not isinstance(self.job_key_mode, str) or self.job_key_mode not in JOB_KEY_MODES:
                raise ConfigurationError(
                    f"job_key_mode must be one of {', '.join(map(repr, JOB_KEY_MODES))}, "
                    f"got {_shown(self.job_key_mode)}"
                )
            if self.job_key is None:
                raise ConfigurationError("job_key_mode needs a job_key")
        if self.flags is not None:
            _check_flags(self.flags)
        return self


def check_identifier(identifier: object) -> None:
    """Raise ConfigurationError unless ``identifier`` can name a task (a str of 1 to 128
    characters, as graphile-worker's ``tasks`` table allows)."""
    _check_text("task identifier", identifier, MAX_IDENTIFIER_LENGTH)


def check_task_identifier(identifier: str) -> None:
    """Raise ConfigurationError unless ``identifier`` is one ``App.task`` registers (see
    ``TASK_IDENTIFIER``; at most 128 characters)."""
    if not TASK_IDENTIFIER.fullmatch(identifier) or len(identifier) > MAX_IDENTIFIER_LENGTH:
        raise ConfigurationError(
            f"task identifier {identifier!r} must start with a letter or _, hold only "
            "letters, digits and _ : / . -, and be at most 128 characters"
        )


def _shown(value: object) -> str:
    """A value as an error message shows it: its repr (cut short) and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_smallint(name: str, value: object, low: int) -> None:
    """Raise ConfigurationError unless ``value`` is an int from ``low`` to 32767 (the
    columns are smallint)."""
    # bool is an int subclass, but priority=True is a mistake, not a number.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= SMALLINT_MAX:
        raise ConfigurationError(
            f"{name} must be an int from {low} to {SMALLINT_MAX}, got {_shown(value)}"
        )


def _check_text(name: str, value: object, max_length: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        length = f", {len(value)} characters" if isinstance(value, str) else ""
        raise ConfigurationError(
            f"{name} must be a str of 1 to {max_length} characters, got {_shown(value)}{length}"
        )


def check_run_at(value: object) -> None:
    """Raise ConfigurationError unless ``value`` is a timezone-aware datetime."""
    # A naive datetime would be read in the database session's TimeZone, which is
    # rarely what the caller meant: refuse it rather than guess.
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        what = f"{value!r}, which has no tzinfo" if isinstance(value, datetime) else _shown(value)
        raise ConfigurationError(
            "run_at must be a timezone-aware datetime, e.g. "
            f"datetime.now(timezone.utc) + timedelta(minutes=5); got {what}"
        )


def check_delay(name: str, value: object) -> None:
    """Raise ConfigurationError unless ``value`` is a duration that is not negative:
    seconds (an int or a float) or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(
            f"{name} must be seconds (an int or a float) or a timedelta, got {_shown(value)}"
        )
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigurationError(f"{name} must be a finite duration >= 0, got {_shown(value)}")


def _as_timedelta(value: float | timedelta) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def _check_flags(value: object) -> None:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigurationError(f"flags must be a list of str, like ['slow'], got {_shown(value)}")
    for flag in value:
        if not isinstance(flag, str):
            raise ConfigurationError(f"flags must be a list of str, got {_shown(flag)} in it")


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
    delay: float | timedelta | None = None

    def __post_init__(self) -> None:
        check_identifier(self.identifier)

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
            delay=self.delay,
        )
