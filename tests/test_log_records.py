"""SiteRecords, the records of a job's log line: field for field what ``makeRecord``
makes, and an application's own record factory still obeyed."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pgworker.logs import TEXT_FORMAT, JsonFormatter, SiteRecords, TextFormatter

#: Fields that depend on the moment a record is made.
TIMING = {"created", "msecs", "relativeCreated"}
EXTRA = {"job_id": 7, "task_identifier": "t", "queue_name": None, "duration_ms": 1.5}


@pytest.fixture
def site() -> SiteRecords:
    return SiteRecords(logging.getLogger("pgworker.tests.site"), "/x/outcome.py", 42, "log")


def reference(
    site: SiteRecords, level: int, msg: str, args: tuple[object, ...]
) -> logging.LogRecord:
    logger = site.logger
    return logger.makeRecord(logger.name, level, "/x/outcome.py", 42, msg, args, None, "log", EXTRA)


def without_timing(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name, value in vars(record).items() if name not in TIMING}


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, logging.ERROR])
def test_a_site_record_has_every_field_of_make_record_s(site: SiteRecords, level: int) -> None:
    ours = site.make(level, "Completed %s (%s)", ("t #7", "attempt 1 of 25"), EXTRA)
    theirs = reference(site, level, "Completed %s (%s)", ("t #7", "attempt 1 of 25"))
    assert type(ours) is logging.LogRecord
    assert without_timing(ours) == without_timing(theirs)
    assert abs(ours.created - theirs.created) < 1
    assert ours.msecs == int((ours.created - int(ours.created)) * 1000)
    assert (
        abs(
            (ours.relativeCreated - theirs.relativeCreated) - (ours.created - theirs.created) * 1000
        )
        < 1
    )
    assert ours.getMessage() == "Completed t #7 (attempt 1 of 25)"


def test_formatters_write_the_same_line_for_either_record(site: SiteRecords) -> None:
    ours = site.make(logging.INFO, "Completed %s", ("t #7",), EXTRA)
    theirs = reference(site, logging.INFO, "Completed %s", ("t #7",))
    for name in TIMING:
        setattr(theirs, name, getattr(ours, name))
    for formatter in (TextFormatter(), JsonFormatter(), logging.Formatter(TEXT_FORMAT)):
        assert formatter.format(ours) == formatter.format(theirs)


def test_the_thread_and_process_switches_of_logging_are_obeyed(
    site: SiteRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = site.make(logging.INFO, "m", (), EXTRA)
    assert (record.thread, record.threadName) == (
        threading.get_ident(),
        threading.current_thread().name,
    )
    monkeypatch.setattr(logging, "logThreads", False)
    monkeypatch.setattr(logging, "logProcesses", False)
    monkeypatch.setattr(logging, "logMultiprocessing", False)
    record = site.make(logging.INFO, "m", (), EXTRA)
    assert (record.thread, record.threadName, record.process, record.processName) == (
        None,
        None,
        None,
        None,
    )
    assert without_timing(record) == without_timing(reference(site, logging.INFO, "m", ()))


@pytest.mark.skipif(sys.version_info < (3, 12), reason="LogRecord.taskName came in 3.12")
def test_the_asyncio_task_s_name_is_recorded(site: SiteRecords) -> None:
    import asyncio

    async def log() -> logging.LogRecord:
        return site.make(logging.INFO, "m", (), EXTRA)

    async def main() -> logging.LogRecord:
        return await asyncio.create_task(log(), name="named-task")

    assert asyncio.run(main()).taskName == "named-task"
    assert site.make(logging.INFO, "m", (), EXTRA).taskName is None


@pytest.fixture
def own_factory() -> Iterator[list[logging.LogRecord]]:
    made: list[logging.LogRecord] = []
    default = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = default(*args, **kwargs)
        record.trace_id = "abc"
        made.append(record)
        return record

    logging.setLogRecordFactory(factory)
    yield made
    logging.setLogRecordFactory(default)


def test_an_application_s_record_factory_makes_the_records(
    site: SiteRecords, own_factory: list[logging.LogRecord]
) -> None:
    record = site.make(logging.INFO, "m %s", ("x",), EXTRA)
    assert own_factory == [record]
    assert record.trace_id == "abc"
    assert (record.getMessage(), record.job_id) == ("m x", 7)
