"""The crontab format: the cron items built on cron expressions, and crontab text."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl

import json5
import msgspec

from .cron_expr import CronExpression, CronExpressionError, format_cron_ts
from .errors import ConfigurationError, PayloadError
from .payload import PayloadCodec
from .spec import JobSpec, check_task_identifier

#: The job key modes a cron item may use (``unsafe_dedupe`` is not one, as in graphile-worker).
CronJobKeyMode = Literal["replace", "preserve_run_at"]
CRON_JOB_KEY_MODES: tuple[CronJobKeyMode, ...] = ("replace", "preserve_run_at")
#: graphile-worker's pattern for the ``id`` of a cron item (the crontab's ``?id=``).
CRON_ID = re.compile(r"^[_a-zA-Z][-_a-zA-Z0-9]*$")
#: The other crontab option patterns (graphile-worker's).
_FILL = re.compile(r"^(?:[0-9]+[smhdw])+$")
_FILL_PART = re.compile(r"([0-9]+)([smhdw])")
_MAX = re.compile(r"^[0-9]+$")
_QUEUE = re.compile(r"^[-a-zA-Z0-9_:]+$")
_PRIORITY = re.compile(r"^-?[0-9]+$")
_FILL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest backfill period (Python's timedelta ends at 999,999,999 days).
_MAX_FILL_SECONDS = 100_000_000 * 604800
#: Option names as written in a crontab, mapped to one name per option (Node's camelCase
#: and the Rust port's snake_case spellings of the job key options are both accepted).
_OPTION_NAMES = {
    "id": "id",
    "fill": "fill",
    "max": "max",
    "queue": "queue",
    "jobKey": "jobKey",
    "jobKeyMode": "jobKeyMode",
    "priority": "priority",
    "job_key": "jobKey",
    "job_key_mode": "jobKeyMode",
}

#: What each option's value must look like, and what to say when it does not.
_OPTION_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "id": (CRON_ID, "an identifier starts with a letter or _ and holds letters, digits, _ and -"),
    "fill": (_FILL, "expected a period such as 30m, 1h30m or 1w2d3h4m5s"),
    "max": (_MAX, "expected a whole number of attempts"),
    "queue": (_QUEUE, "a queue name holds letters, digits and - _ :"),
    "jobKeyMode": (
        re.compile(r"^(?:replace|preserve_run_at)$"),
        "expected 'replace' or 'preserve_run_at'",
    ),
    "priority": (_PRIORITY, "expected a whole number"),
}


class CrontabError(ConfigurationError):
    """A crontab line is malformed: the message names the line, quotes it and says why."""

    def __init__(self, source: str, line_number: int, line: str, problem: str) -> None:
        super().__init__(f"line {line_number} of {source}: {problem} (in '{line}')")
        self.source = source
        self.line_number = line_number
        self.line = line
        self.problem = problem


class CronItem(msgspec.Struct, frozen=True, kw_only=True):
    """One recurring job: which task, when, with which options and payload.

    - ``identifier``: the item's name in ``_private_known_crontabs`` (default: the task's);
      unique in a cron table, shared by every worker running that table.
    - ``backfill_period``: after downtime, jobs are made for missed minutes this recent.
    - ``max_attempts``, ``queue``, ``priority``, ``job_key``, ``job_key_mode``: as for
      ``defer``; ``job_key_mode`` is ``replace`` (the default with a key) or
      ``preserve_run_at``.
    - ``payload``: a JSON object, or None; each job's payload is it plus a ``_cron`` field
      (``{"ts": "2024-01-01T04:30:00.000Z", "backfilled": false}``), which replaces any
      ``_cron`` of its own.
    """

    identifier: str
    task: str
    expression: CronExpression
    backfill_period: timedelta = timedelta(0)
    max_attempts: int | None = None
    queue: str | None = None
    priority: int | None = None
    job_key: str | None = None
    job_key_mode: CronJobKeyMode | None = None
    payload: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.identifier:
            raise ConfigurationError("a cron item's identifier must not be empty")
        if not 0 < len(self.task) <= 128:
            raise ConfigurationError(
                f"cron item {self.identifier!r}: the task identifier must be 1 to 128 characters"
            )
        if self.backfill_period < timedelta(0):
            raise ConfigurationError(
                f"cron item {self.identifier!r}: the backfill period must not be negative"
            )
        if self.payload is not None and not isinstance(self.payload, dict):
            raise ConfigurationError(
                f"cron item {self.identifier!r}: the payload must be a JSON object (a dict), "
                f"got {type(self.payload).__name__}"
            )
        if self.job_key_mode is not None and self.job_key_mode not in CRON_JOB_KEY_MODES:
            raise ConfigurationError(
                f"cron item {self.identifier!r}: job_key_mode must be 'replace' or "
                f"'preserve_run_at', got {self.job_key_mode!r}"
            )
        try:
            JobSpec(
                queue=self.queue,
                priority=self.priority,
                max_attempts=self.max_attempts,
                job_key=self.job_key,
                job_key_mode=self.job_key_mode,
            ).validate()
        except ConfigurationError as exc:
            raise ConfigurationError(f"cron item {self.identifier!r}: {exc}") from None

    def matches(self, ts: datetime) -> bool:
        """Whether the item is due in the minute of ``ts``."""
        return self.expression.matches(ts)

    def job_payload(self, ts: datetime, *, backfilled: bool) -> dict[str, Any]:
        """The payload of the item's job for the minute ``ts``."""
        return {
            **(self.payload or {}),
            "_cron": {"ts": format_cron_ts(ts), "backfilled": backfilled},
        }

    def check_payload(self, codec: PayloadCodec[Any]) -> None:
        """Raise PayloadError unless the task's payload type accepts this item's jobs
        (the item's payload with the ``_cron`` field added)."""
        sample = self.job_payload(datetime(2000, 1, 1, tzinfo=UTC), backfilled=False)
        try:
            codec.encode(sample)
        except PayloadError as exc:
            hint = "" if self.payload is not None else " (the item has no payload: give it one)"
            raise PayloadError(
                f"cron item {self.identifier!r}: its jobs' payload {json.dumps(sample)} does "
                f"not suit task {self.task!r}{hint}: {exc}",
                path=exc.path,
            ) from exc


def parse_crontab(text: str, *, source: str = "crontab") -> list[CronItem]:
    """Parse graphile-worker's crontab format into cron items, in line order.

    Each line is ``MIN HOUR DOM MON DOW task [?options] [{payload}]``; blank lines and
    lines starting with ``#`` are skipped. Options, URL-query style: ``id``, ``fill``
    (``1w2d3h4m5s``), ``max``, ``queue``, ``jobKey``, ``jobKeyMode``, ``priority``
    (``job_key`` and ``job_key_mode`` are accepted too); an unknown or repeated option is
    an error. The payload is a JSON5 object that ends the line, as in graphile-worker
    (``{greeting: 'hi', n: 0x10,}``). The task identifier follows ``App.task``'s rule,
    dots included (graphile-worker's parser refuses dots).

    Raises CrontabError naming the line (``source`` names the file in messages), also
    for two items with one identifier.
    """
    items: list[CronItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(re.split(r"\r?\n", text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            item = _parse_line(line)
        except ConfigurationError as exc:
            raise CrontabError(source, number, line, str(exc)) from None
        if item.identifier in seen:
            raise CrontabError(
                source,
                number,
                line,
                f"identifier '{item.identifier}' is already used on line "
                f"{seen[item.identifier]}: give one of them another with ?id=...",
            )
        seen[item.identifier] = number
        items.append(item)
    return items


def _parse_line(line: str) -> CronItem:
    parts = line.split(None, 5)
    if len(parts) < 6:
        raise ConfigurationError(
            f"expected five time fields and a task identifier, found {len(parts)} parts"
        )
    try:
        expression = CronExpression.parse(" ".join(parts[:5]))
    except CronExpressionError as exc:
        raise ConfigurationError(exc.problem) from None
    task, options_text, payload_text = _split_command(parts[5])
    options = _parse_options(options_text)
    job_key = options.get("jobKey")
    job_key_mode: CronJobKeyMode | None = None
    if job_key is not None:
        job_key_mode = (
            "preserve_run_at" if options.get("jobKeyMode") == "preserve_run_at" else "replace"
        )
    elif "jobKeyMode" in options:
        raise ConfigurationError("option 'jobKeyMode' needs a 'jobKey'")
    return CronItem(
        identifier=options.get("id", task),
        task=task,
        expression=expression,
        backfill_period=_parse_fill(options["fill"]) if "fill" in options else timedelta(0),
        max_attempts=int(options["max"]) if "max" in options else None,
        queue=options.get("queue"),
        priority=int(options["priority"]) if "priority" in options else None,
        job_key=job_key,
        job_key_mode=job_key_mode,
        payload=_parse_payload(payload_text) if payload_text is not None else None,
    )


def _split_command(command: str) -> tuple[str, str | None, str | None]:
    """``task [?options] [{payload}]`` as its three parts."""
    task, rest = _split_word(command)
    # One rule with App.task, so any registered task can be scheduled; graphile-worker's
    # parser refuses dots, so a crontab naming such a task is pgworker's alone.
    check_task_identifier(task)
    options = None
    if rest.startswith("?"):
        if len(rest) == 1 or rest[1].isspace():
            raise ConfigurationError("empty options after '?'")
        options, rest = _split_word(rest[1:])
    if not rest:
        return task, options, None
    if rest.startswith("{") and rest.endswith("}"):
        return task, options, rest
    word = rest.split()[0]
    if rest.startswith("{"):
        hint = " (the payload must end the line with its closing })"
    elif word.startswith("#"):
        hint = " (comments go on lines of their own)"
    else:
        hint = ""
    raise ConfigurationError(
        f"unexpected '{word}' after the task identifier: expected ?options, then a "
        f"{{JSON5 payload}}{hint}"
    )


def _split_word(text: str) -> tuple[str, str]:
    """The first word of ``text`` and the rest, without the whitespace between them."""
    parts = text.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (text.strip(), "")


def _parse_options(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    options: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        name = _OPTION_NAMES.get(key)
        if name is None:
            raise ConfigurationError(
                f"unsupported option '{key}'; supported options are 'id', 'fill', 'max', "
                "'queue', 'jobKey' (or 'job_key'), 'jobKeyMode' (or 'job_key_mode') and "
                "'priority'"
            )
        if name in options:
            raise ConfigurationError(f"option '{key}' is given more than once")
        pattern, expected = _OPTION_PATTERNS.get(name, (None, ""))
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigurationError(f"invalid value '{value}' for option '{key}': {expected}")
        options[name] = value
    return options


def _parse_fill(text: str) -> timedelta:
    """A backfill period such as ``1w2d3h4m5s`` (weeks, days, hours, minutes, seconds)."""
    seconds = sum(int(n) * _FILL_UNITS[unit] for n, unit in _FILL_PART.findall(text))
    if seconds > _MAX_FILL_SECONDS:
        raise ConfigurationError(
            f"invalid value '{text}' for option 'fill': at most {_MAX_FILL_SECONDS // 604800} weeks"
        )
    return timedelta(seconds=seconds)


def _parse_payload(text: str) -> dict[str, Any]:
    """A JSON5 object, as graphile-worker reads crontab payloads (unquoted keys, single
    quotes, trailing commas, comments, hexadecimal numbers)."""
    try:
        payload = json5.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise ConfigurationError(f"invalid JSON5 payload: {exc}") from None
    if not isinstance(payload, dict):
        raise ConfigurationError("the payload must be a JSON5 object")
    return payload


def _reject_constant(name: str) -> Any:
    # Node's JSON5 reads them, then its JSON.stringify writes null: refuse instead.
    raise ValueError(f"{name} cannot be stored in a JSON payload")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large to store in a JSON payload")
    return value
