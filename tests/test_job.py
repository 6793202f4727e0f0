"""Unit tests of the one mapping from a row to a Job (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pgworker.job import JOB_COLUMNS, Job, JobRowReader, job_row_reader

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
VALUES = {
    "id": 7,
    "priority": -1,
    "run_at": NOW,
    "attempts": 2,
    "max_attempts": 25,
    "last_error": "boom",
    "created_at": NOW,
    "updated_at": NOW,
    "key": "k",
    "locked_at": None,
    "locked_by": None,
    "revision": 3,
    "flags": ["b", "a"],
    "task_id": 11,
}


def test_columns_are_read_by_name_in_any_order() -> None:
    columns = ("task_id", *reversed(JOB_COLUMNS))
    reader = job_row_reader(columns)
    row = tuple(VALUES[name] for name in columns)
    job = reader.job(row, task_identifier="send_email", queue_name="mail")
    assert job == Job(
        **{name: VALUES[name] for name in JOB_COLUMNS if name != "flags"},
        flags=["a", "b"],
        task_identifier="send_email",
        queue_name="mail",
    )
    assert row[reader.positions["task_id"]] == 11
    assert job_row_reader(columns) is reader


def test_a_row_without_every_job_column_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lack the columns \['flags'\]"):
        JobRowReader(JOB_COLUMNS[:-1])


def test_a_column_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        JobRowReader((*JOB_COLUMNS, "id"))
