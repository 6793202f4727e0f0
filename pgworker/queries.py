"""The SQL files shipped with pgworker, loaded once and bound to a schema name."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from types import MappingProxyType

from psycopg import sql

from .job import JOB_COLUMNS

#: Stands for the columns a Job is read from, taken from a row source named ``jobs``.
JOB_COLUMNS_TOKEN = ":JOB_COLUMNS"
# Our own constant column names, not input: spelled into the text as the file would be.
_JOB_COLUMN_LIST = ", ".join(f"jobs.{name}" for name in JOB_COLUMNS)
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

#: The files of named statements that ``Queries`` loads; a name is defined in one of them.
QUERY_FILES: tuple[str, ...] = ("queries.sql", "recovery.sql", "control.sql", "fast_enqueue.sql")


@cache
def read_sql_file(filename: str) -> str:
    """Return the text of one file in ``pgworker/sql``."""
    return resources.files("pgworker").joinpath("sql", filename).read_text(encoding="utf-8")


def parse_named_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: NAME`` blocks into a mapping of name to statement."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = _strip_leading_comments(body)
    return queries


@cache
def load_named_queries(filenames: tuple[str, ...]) -> Mapping[str, str]:
    """The named statements of several files in ``pgworker/sql``, merged into one mapping
    with :JOB_COLUMNS spelled out; a name defined in two files is an error."""
    queries: dict[str, str] = {}
    defined_in: dict[str, str] = {}
    for filename in filenames:
        for name, text in parse_named_queries(read_sql_file(filename)).items():
            if name in defined_in:
                raise ValueError(
                    f"query {name!r} is defined in both {defined_in[name]} and {filename}"
                )
            defined_in[name] = filename
            queries[name] = text.replace(JOB_COLUMNS_TOKEN, _JOB_COLUMN_LIST)
    return MappingProxyType(queries)


def _strip_leading_comments(body: str) -> str:
    """The statement without the description lines above it (docs for readers of the
    file, not bytes to send with every execution)."""
    lines = body.strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip()


#: The tokens of pgworker's .sql files: the names (the worker schema, and for the enqueue
#: functions their schema and the role they are granted to), and a claim's row limit.
NAME_TOKENS = re.compile(r":(SCHEMA|ENQUEUE|ROLE|LIMIT)\b")


def bind_names(text: str, names: Mapping[str, str], *, limit: int | None = None) -> sql.Composed:
    """Replace each :SCHEMA, :ENQUEUE and :ROLE token in ``text`` (the text of one of
    pgworker's own .sql files) with its quoted identifier from ``names``, and :LIMIT
    with the number ``limit``, or with None with the parameter ``%(limit)s``."""
    pieces = NAME_TOKENS.split(text)
    parts: list[sql.Composable] = [sql.SQL(pieces[0])]
    for token, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        value: sql.Composable
        if token == "LIMIT":
            value = sql.Placeholder("limit") if limit is None else sql.Literal(int(limit))
        else:
            value = sql.Identifier(names[token])
        parts += [value, sql.SQL(piece)]
    return sql.Composed(parts)


def bind_schema(text: str, schema: str) -> sql.Composed:
    """Replace every :SCHEMA token in ``text`` with the quoted identifier ``schema``."""
    return bind_names(text, {"SCHEMA": schema})


class Queries:
    """The named statements of ``files`` (by default every file of ``QUERY_FILES``), bound
    to one schema, built once each."""

    def __init__(self, schema: str, files: Sequence[str] = QUERY_FILES) -> None:
        self.schema = schema
        self._texts = load_named_queries(tuple(files))
        self._bound: dict[str, bytes] = {}
        self._limited: dict[tuple[str, int], bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        """The statement ``name`` with the schema bound, as bytes ready to execute."""
        # Rendered to bytes once: the hot path then sends the same bytes every time,
        # which also lets psycopg prepare the statement after a few executions.
        bound = self._bound.get(name)
        if bound is None:
            bound = self._bound[name] = self.composed(name).as_bytes(None)
        return bound

    def composed(self, name: str) -> sql.Composed:
        """The statement ``name`` with the schema bound, for a caller that completes it
        with more composed SQL (a column list)."""
        return bind_schema(self._texts[name], self.schema)

    def with_limit(self, name: str, limit: int) -> bytes:
        """The statement ``name`` with its :LIMIT spelled out as the number ``limit``: a
        statement of its own for each limit, which PostgreSQL can plan once for all its
        runs (``__getitem__``'s sends the limit as a parameter)."""
        key = (name, limit)
        bound = self._limited.get(key)
        if bound is None:
            text = bind_names(self._texts[name], {"SCHEMA": self.schema}, limit=limit)
            bound = self._limited[key] = text.as_bytes(None)
        return bound
