"""DashboardStore: the statements behind the dashboard's reads that the admin API lacks."""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from ..admin import JobState, ListedJob
from ..queries import Queries
from ..store_base import Connection, StoreBase


class DashboardStore(StoreBase):
    """The statements of ``sql/dashboard.sql``, bound to the worker schema ``schema``."""

    def __init__(self, pool: ConnectionPool[Connection] | None, schema: str) -> None:
        super().__init__(pool, schema)
        self.queries = Queries(schema, files=("dashboard.sql",))

    def jobs_page(
        self,
        *,
        task: str | None,
        queue: str | None,
        job_key: str | None,
        state: JobState | None,
        limit: int,
        offset: int,
    ) -> list[ListedJob]:
        """Jobs matching every filter given, newest first: ``limit`` of them from
        ``offset`` on."""
        params = {
            "task": task,
            "queue": queue,
            "job_key": job_key,
            "state": state,
            "limit": limit,
            "offset": offset,
        }
        with self.connection() as conn:
            rows, reader = self._fetch_job_rows(conn, "dashboard_jobs", params)
        task_name, queue_name, state_name = (
            reader.positions[column] for column in ("task_identifier", "queue_name", "state")
        )
        return [
            ListedJob(
                reader.job(row, task_identifier=row[task_name], queue_name=row[queue_name]),
                row[state_name],
            )
            for row in rows
        ]
