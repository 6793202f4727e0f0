"""ControlStatements: the store's statements that cancel jobs, and read cancel requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .running import CANCEL_REQUESTED
from .store_base import Connection, StoreBase

#: What a cancel request did: deleted a job that wasn't running, flagged a running one
#: for its worker to stop, or found no such job.
CancelOutcome = Literal["removed", "cancelling", "not_found"]


class ControlStatements(StoreBase):
    """The statements of ``sql/control.sql``, for the Store."""

    def request_cancel(self, job_id: int, reason: str) -> tuple[CancelOutcome, str | None]:
        """Cancel a job: delete it if it isn't running, else ask its worker to stop it.
        Returns what happened and, for a running job, the worker that holds it."""
        with self.connection() as conn, conn.transaction():
            params = {"job_id": job_id, "message": f"{CANCEL_REQUESTED}{reason}"}
            row = conn.execute(self.queries["request_cancel"], params).fetchone()
            if row is None:
                return "not_found", None
            if row[0] == "cancelling":
                conn.execute(self.queries["notify_cancel"], {"job_id": job_id})
                return "cancelling", row[1]
            return "removed", None

    def cancel_requests(self, job_ids: Sequence[int], *, conn: Connection) -> dict[int, str | None]:
        """Which of these jobs have a cancel request: job id to its last_error."""
        rows = conn.execute(self.queries["cancel_requests"], {"job_ids": list(job_ids)})
        return dict(rows.fetchall())
