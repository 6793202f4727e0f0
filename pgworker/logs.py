"""Log output for the CLI: plain text, or one JSON object per line with the job's fields."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Iterator
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
    second rather than once per line (the same text: only the milliseconds change)."""

    _second: tuple[int, str] = (-1, "")

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

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
