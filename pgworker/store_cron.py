"""CronStatements: the store's statements behind the cron scheduler."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from .store_base import StoreBase

if TYPE_CHECKING:
    from .crontab import CronItem


class KnownCrontab(msgspec.Struct, frozen=True):
    """What ``_private_known_crontabs`` holds for one cron item."""

    known_since: datetime
    last_execution: datetime | None


class CronStatements(StoreBase):
    """The statements ``CronScheduler`` runs, by graphile-worker's cron protocol."""

    def known_crontabs(self, identifiers: Sequence[str]) -> dict[str, KnownCrontab]:
        """What is recorded for those of these cron items that are known, by identifier."""
        with self.connection() as conn:
            rows = conn.execute(
                self.queries["known_crontabs"], {"identifiers": list(identifiers)}
            ).fetchall()
        return {identifier: KnownCrontab(since, last) for identifier, since, last in rows}

    def register_crontabs(self, identifiers: Sequence[str], known_since: datetime) -> None:
        """Record these cron items as known since ``known_since``, with no last execution
        (so they are never backfilled); items known already are left as they are."""
        self._execute(
            "register_crontabs", {"identifiers": list(identifiers), "known_since": known_since}
        )

    def schedule_cron_jobs(
        self, due: Sequence[CronItem], ts: datetime, *, backfilled: bool
    ) -> list[tuple[str, int]]:
        """Add the jobs of the items ``due`` at the minute ``ts``, except those another
        worker added already; ``(item identifier, job id)`` of each job added, in the order
        of ``due``."""
        specs = [
            {
                "identifier": item.identifier,
                "task": item.task,
                "payload": item.job_payload(ts, backfilled=backfilled),
                "queue_name": item.queue,
                "max_attempts": item.max_attempts,
                "priority": item.priority,
                "job_key": item.job_key,
                "job_key_mode": item.job_key_mode,
            }
            for item in due
        ]
        # Compact, like JSON.stringify: a job reads the same whichever worker made it.
        params = {"specs": json.dumps(specs, separators=(",", ":"), ensure_ascii=False), "ts": ts}
        with self.connection() as conn:
            rows = conn.execute(self.queries["schedule_cron_jobs"], params).fetchall()
        return [(identifier, job_id) for identifier, job_id in rows]
