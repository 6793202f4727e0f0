"""Log output for the CLI: plain text, or one JSON object per line with the job's fields."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

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


def configure_logging(level: str, fmt: str) -> None:
    """Send logs to stderr at ``level``, as ``text`` or ``json`` lines (CLI only: a
    library leaves handlers to the application)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
