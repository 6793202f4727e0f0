"""Database helpers of the benchmark: connections, the database to use, schemas."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import CONNECT_TIMEOUT, ROOT, STATEMENT_TIMEOUT_MS, progress


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    conn.execute(f"set statement_timeout = {STATEMENT_TIMEOUT_MS}")
    return conn


@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """Yield (url, description): DATABASE_URL, else the embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, "DATABASE_URL"
        return
    from pgworker.embedded import embedded_postgres

    progress("DATABASE_URL is not set: starting the embedded PostgreSQL in .pgworker/")
    with embedded_postgres(ROOT / ".pgworker") as embedded_url:
        yield embedded_url, "embedded"


def remaining_jobs(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> int:
    query = sql.SQL("select count(*) from {}._private_jobs").format(sql.Identifier(schema))
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def has_jobs(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> bool:
    """Whether any job is left: a cheap check (the primary key's first entry) for polling."""
    query = sql.SQL("select id from {}._private_jobs order by id limit 1").format(
        sql.Identifier(schema)
    )
    return conn.execute(query).fetchone() is not None


def analyze(url: str, schema: str) -> None:
    """Give the planner statistics of the filled table, so that both sides claim with
    the plan a long-lived queue would have, whenever autovacuum happens to run."""
    with connect(url) as conn:
        conn.execute(sql.SQL("analyze {}._private_jobs").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
