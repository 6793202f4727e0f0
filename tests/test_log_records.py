"""SiteRecords, the records of a job's log line: field for field what ``makeRecord``
makes, and an application's own record factory still obeyed."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pgworker import logs
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
    assert list(vars(ours)) == list(vars(theirs))
    assert abs(ours.created - theirs.created) < 1
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


#: Moments where the milliseconds are easy to get wrong (nanoseconds since the epoch).
BOUNDARIES = [1_677_903_920_999_999_900, 1_677_903_920_999_998_503, 1_700_000_000_001_000_000]


@pytest.mark.parametrize("ns", BOUNDARIES)
def test_the_time_fields_are_make_record_s(
    site: SiteRecords, monkeypatch: pytest.MonkeyPatch, ns: int
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    monkeypatch.setattr(time, "time", lambda: ns / 1e9)
    ours = site.make(logging.INFO, "m", (), EXTRA)
    theirs = reference(site, logging.INFO, "m", ())
    assert (ours.created, ours.msecs) == (theirs.created, theirs.msecs)
    assert ours.relativeCreated == pytest.approx(theirs.relativeCreated, abs=1e-3)


def test_a_lone_mapping_is_the_argument_as_for_make_record(site: SiteRecords) -> None:
    ours = site.make(logging.INFO, "%(a)s and %(b)s", ({"a": 1, "b": 2},), EXTRA)
    assert ours.getMessage() == "1 and 2"
    assert ours.args == reference(site, logging.INFO, "%(a)s and %(b)s", ({"a": 1, "b": 2},)).args


@pytest.mark.parametrize("key", ["msg", "lineno", "message", "asctime"])
def test_an_extra_key_may_not_overwrite_a_field(site: SiteRecords, key: str) -> None:
    with pytest.raises(KeyError, match=f"Attempt to overwrite '{key}'"):
        site.make(logging.INFO, "m", (), {key: 1})


def test_a_wrapped_or_overridden_make_record_makes_the_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tracer that wraps Logger.makeRecord to add fields (as ddtrace's log injection
    does), or a logger class of the application's, keeps seeing every record."""
    standard = logging.Logger.makeRecord

    def wrapped(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = standard(self, *args, **kwargs)
        record.trace_id = "wrapped"
        return record

    site = SiteRecords(logging.getLogger("pgworker.tests.wrapped"), "/x/outcome.py", 42, "log")
    assert not hasattr(site.make(logging.INFO, "m", (), EXTRA), "trace_id")
    monkeypatch.setattr(logging.Logger, "makeRecord", wrapped)
    assert site.make(logging.INFO, "m", (), EXTRA).trace_id == "wrapped"

    class OwnLogger(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = standard(self, *args, **kwargs)
            record.trace_id = "subclass"
            return record

    own = SiteRecords(OwnLogger("pgworker.tests.own"), "/x/outcome.py", 42, "log")
    assert own.make(logging.INFO, "m", (), EXTRA).trace_id == "subclass"


def test_a_field_it_does_not_know_sends_it_to_make_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A LogRecord field of a later Python is left to makeRecord, not frozen."""
    monkeypatch.setattr(logs, "_PER_SITE", logs._PER_SITE - {"module"})
    site = SiteRecords(logging.getLogger("pgworker.tests.unknown"), "/x/outcome.py", 42, "log")
    record = site.make(logging.INFO, "m %s", ("x",), EXTRA)
    assert without_timing(record) == without_timing(reference(site, logging.INFO, "m %s", ("x",)))
    assert not site._standard()
