"""Unit tests of the named-statement loader (no database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgworker import queries
from pgworker.queries import QUERY_FILES, Queries, load_named_queries

FILES = {
    "one.sql": "-- name: first\n-- Says what it does.\nselect 1\n\n-- name: second\nselect 2\n",
    "two.sql": "-- name: third\nselect :SCHEMA.f()\n",
    "clash.sql": "-- name: second\nselect 22\n",
}


@pytest.fixture
def sql_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(queries, "read_sql_file", FILES.__getitem__)
    load_named_queries.cache_clear()
    yield
    load_named_queries.cache_clear()


@pytest.mark.usefixtures("sql_files")
def test_statements_of_several_files_are_merged_without_their_descriptions() -> None:
    bound = Queries("my schema", files=("one.sql", "two.sql"))
    assert bound["first"] == b"select 1"
    assert bound["second"] == b"select 2"
    assert bound["third"] == b'select "my schema".f()'


@pytest.mark.usefixtures("sql_files")
def test_a_name_defined_in_two_files_is_an_error_naming_both() -> None:
    with pytest.raises(ValueError, match=r"'second' is defined in both one\.sql and clash\.sql"):
        Queries("s", files=("one.sql", "clash.sql"))


def test_the_shipped_files_define_each_name_once_with_job_columns_spelled_out() -> None:
    texts = load_named_queries(QUERY_FILES)
    assert "claim_jobs" in texts
    assert not [name for name, text in texts.items() if ":JOB_COLUMNS" in text]
    assert texts["add_job"].startswith(
        "select jobs.id, jobs.priority, jobs.run_at, jobs.attempts, jobs.max_attempts, "
    )
