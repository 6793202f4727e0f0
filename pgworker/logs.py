"""Log output for the CLI: plain text, or one JSON object per line with the job's fields;
and SiteRecords, the cheap making of the records of one call site logged once per job."""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

import msgspec

#: The ``extra`` fields pgworker attaches to job records, copied into JSON lines.
JOB_FIELDS = ("job_id", "task_identifier", "queue_name", "attempt", "max_attempts", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the job fields when
    the record has them, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in JOB_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


class TextFormatter(logging.Formatter):
    """``logging.Formatter(TEXT_FORMAT)``, with the local time's text made once per
    second rather than once per line (the same text: only the milliseconds change), and
    a line without a traceback made in one step."""

    _second: tuple[int, str] = (-1, "")

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, as ``logging.Formatter.format`` makes it."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return TEXT_FORMAT % record.__dict__

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``%(asctime)s``, as logging.Formatter writes it."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            text = time.strftime(self.default_time_format, self.converter(second))
            cached = self._second = (second, text)
        msec_format = self.default_msec_format
        return msec_format % (cached[1], record.msecs) if msec_format else cached[1]


#: The fields of a LogRecord that SiteRecords works out per record, as LogRecord does.
_PER_RECORD = frozenset(
    (
        "msg", "args", "levelname", "levelno", "created", "msecs", "relativeCreated",
        "thread", "threadName", "processName", "process", "taskName",
    )
)  # fmt: skip
#: The fields fixed for a call site (and the logger's name).
_PER_SITE = frozenset(
    ("name", "pathname", "filename", "module", "exc_info", "exc_text", "stack_info",
     "lineno", "funcName")
)  # fmt: skip
#: Python 3.13 and later time records in nanoseconds (``time.time_ns``).
_NANOSECONDS = sys.version_info >= (3, 13)


class SiteRecords:
    """Makes the records of one logging call site (``pathname``, ``lineno`` and
    ``func`` fixed) as ``logger.makeRecord`` does, field for field and in the same order
    (``relativeCreated`` to within a microsecond on 3.13), for about half the cost: the
    fields of the site are worked out once. A job's log line is made per job, so it adds
    up.

    Falls back to ``makeRecord`` when an application installed its own record factory
    (``logging.setLogRecordFactory``), when the logger's ``makeRecord`` is not the
    standard library's (a subclass, or a tracer's wrapper that adds fields), or when this
    Python's LogRecord has a field that this class does not know.
    """

    def __init__(self, logger: logging.Logger, pathname: str, lineno: int, func: str) -> None:
        self.logger = logger
        self._site = (pathname, lineno, func)
        sample = logging.LogRecord(logger.name, logging.INFO, pathname, lineno, "", (), None, func)
        self._template = dict(vars(sample))
        self._known = self._template.keys() <= _PER_SITE | _PER_RECORD
        self._tasks = "taskName" in self._template
        # The start LogRecord counts relativeCreated from (time.time(), or time_ns()).
        if _NANOSECONDS:
            self._start: float = round(sample.created * 1e9 - sample.relativeCreated * 1e6)
        else:
            self._start = sample.created - sample.relativeCreated / 1000
        self._checked: object = None  # the makeRecord last found to be logging's own

    def make(
        self, level: int, msg: str, args: tuple[object, ...], extra: Mapping[str, object]
    ) -> logging.LogRecord:
        """A record of ``msg % args`` at ``level``, with ``extra``'s keys as attributes
        (KeyError if one names a field of LogRecord, as for ``makeRecord``)."""
        if not self._standard():
            pathname, lineno, func = self._site
            return self.logger.makeRecord(
                self.logger.name, level, pathname, lineno, msg, args, None, func, dict(extra)
            )
        fields = self._template.copy()
        if _NANOSECONDS:
            ns = time.time_ns()
            created = ns / 1e9
            msecs = (ns % 1_000_000_000) // 1_000_000 + 0.0
            if msecs == 999.0 and int(created) != ns // 1_000_000_000:
                msecs = 0.0  # the seconds rounded up
            fields["relativeCreated"] = (ns - self._start) / 1e6
        else:
            created = time.time()
            msecs = int((created - int(created)) * 1000) + 0.0
            fields["relativeCreated"] = (created - self._start) * 1000
        fields["created"] = created
        fields["msecs"] = msecs
        fields["msg"] = msg
        # LogRecord's one special case: a lone non-empty mapping is the argument.
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            fields["args"] = args[0]
        else:
            fields["args"] = args
        fields["levelname"] = logging.getLevelName(level)
        fields["levelno"] = level
        threads = logging.logThreads
        fields["thread"] = threading.get_ident() if threads else None
        fields["threadName"] = threading.current_thread().name if threads else None
        fields["processName"] = _process_name()
        fields["process"] = os.getpid() if logging.logProcesses else None
        if self._tasks:
            fields["taskName"] = _task_name()
        for key in extra:
            if key in fields or key == "message" or key == "asctime":
                raise KeyError(f"Attempt to overwrite {key!r} in LogRecord")
        fields.update(extra)
        record = logging.LogRecord.__new__(logging.LogRecord)
        record.__dict__ = fields
        return record

    def _standard(self) -> bool:
        """Whether ``makeRecord`` would make a plain LogRecord as this class does."""
        if not self._known or logging.getLogRecordFactory() is not logging.LogRecord:
            return False
        method = type(self.logger).makeRecord
        if method is not self._checked:
            # logging's own function, not a subclass's nor a wrapper (wrapt's included).
            if not (
                isinstance(method, types.FunctionType)
                and method.__code__.co_filename == logging.makeLogRecord.__code__.co_filename
            ):
                return False
            self._checked = method
        return True


def _process_name() -> str | None:
    """LogRecord's processName."""
    if not logging.logMultiprocessing:
        return None
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return "MainProcess"
    try:
        name: str = multiprocessing.current_process().name
    except Exception:  # as LogRecord does
        return "MainProcess"
    return name


def _task_name() -> str | None:
    """LogRecord's taskName (Python 3.12 and later)."""
    asyncio = sys.modules.get("asyncio")
    if not getattr(logging, "logAsyncioTasks", False) or asyncio is None:
        return None
    try:
        name: str = asyncio.current_task().get_name()
    except Exception:  # no running loop: as LogRecord does
        return None
    return name


#: The most one write of gathered lines holds: a write of up to PIPE_BUF bytes to a pipe
#: is atomic, so lines of processes sharing one stderr pipe never interleave.
ATOMIC_WRITE = select.PIPE_BUF


class _Gathering(threading.local):
    """Per thread: the lines held back by ``gathered_lines``, with their handler (None
    outside such a block)."""

    lines: list[tuple[LineHandler, str]] | None = None


_gathering = _Gathering()


class LineHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose lines, inside ``gathered_lines()`` on the same thread, are
    written together at the end of the block: one write for a batch of job lines
    instead of one per line."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record's line, or hold it back inside ``gathered_lines()``."""
        lines = _gathering.lines
        if lines is None:
            super().emit(record)
            return
        try:
            lines.append((self, self.format(record) + self.terminator))
        except Exception:  # as StreamHandler.emit does
            self.handleError(record)

    def write_lines(self, lines: list[str]) -> None:
        """Write lines held back, a few writes for many lines: each write ends at a line
        end and holds at most ATOMIC_WRITE bytes (a longer line goes alone), so that
        lines from processes sharing a pipe (``run --processes``) never interleave."""
        self.acquire()
        try:
            for chunk in atomic_chunks(lines):
                self.stream.write(chunk)
            self.stream.flush()
        except Exception:  # as StreamHandler.emit does
            self.handleError(logging.makeLogRecord({"msg": "".join(lines)}))
        finally:
            self.release()


def atomic_chunks(lines: list[str]) -> Iterator[str]:
    """``lines`` joined into pieces of at most ATOMIC_WRITE bytes of UTF-8, each made of
    whole lines (a line longer than that is a piece of its own)."""
    piece: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode())
        if piece and size + length > ATOMIC_WRITE:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += length
    if piece:
        yield "".join(piece)


@contextmanager
def gathered_lines() -> Iterator[None]:
    """Within the block, the lines this thread logs through a ``LineHandler`` (the
    CLI's) are written in one go at its end, in order; other handlers are unaffected.
    For a batch of lines logged together (the completer's job lines)."""
    if _gathering.lines is not None:  # nested: the outer block writes them
        yield
        return
    lines: list[tuple[LineHandler, str]] = []
    _gathering.lines = lines
    try:
        yield
    finally:
        _gathering.lines = None
        by_handler: dict[LineHandler, list[str]] = {}
        for handler, line in lines:
            by_handler.setdefault(handler, []).append(line)
        for handler, texts in by_handler.items():
            handler.write_lines(texts)


def configure_logging(level: str, fmt: str) -> None:
    """Send logs to stderr at ``level``, as ``text`` or ``json`` lines (CLI only: a
    library leaves handlers to the application)."""
    handler = LineHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
