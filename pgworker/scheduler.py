"""CronScheduler: makes each due minute's cron jobs once, however many workers run it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .connections import backoff_delay
from .cron_expr import MINUTE, ceil_minute, floor_minute, format_cron_ts
from .crontab import CronItem
from .errors import ConfigurationError
from .hooks import Hooks

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger("pgworker.cron")  # the name users filter cron logs by


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the scheduler's default clock)."""
    return datetime.now(UTC)


class CronScheduler:
    """Turns the due minutes of cron items into jobs, by graphile-worker's protocol.

    On start it registers items it has never seen in ``_private_known_crontabs`` (they
    are never backfilled), then backfills the others: each minute within an item's
    ``backfill_period`` and after its last execution gets its job, marked
    ``backfilled``. Then, every minute, one statement advances each due item's
    ``last_execution`` and adds jobs only for the items whose row it advanced, so that any
    number of workers (pgworker or Node) sharing an item make one job per minute. A timer
    that wakes early sleeps again; a late one catches up minute by minute. After an error
    the scheduler logs it, waits (jittered exponential backoff) and starts over; minutes
    missed meanwhile are made only for items with a backfill period, as in
    graphile-worker.

    ``clock`` returns the current time (timezone-aware); ``sleep`` waits a number of
    seconds, by default ``stop.wait`` in ``run()``. Tests inject both. ``hooks`` get
    ``on_cron_tick`` for each live minute and ``on_cron_job_scheduled`` for each job made.
    """

    def __init__(
        self,
        store: Store,
        items: Sequence[CronItem],
        *,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], object] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        seen: set[str] = set()
        for item in items:
            if item.identifier in seen:
                raise ConfigurationError(
                    f"two cron items have the identifier {item.identifier!r}: give one of "
                    "them another id"
                )
            seen.add(item.identifier)
        self.store = store
        self.items = list(items)
        self.clock = clock
        self._sleep = sleep
        self.hooks = hooks or Hooks()

    def run(self, stop: threading.Event) -> None:
        """Schedule until ``stop`` is set (the body of the scheduler's thread)."""
        if not self.items:
            return
        sleep = self._sleep or stop.wait
        attempt = 0
        while not stop.is_set():
            try:
                start = self._now()
                self.hooks.cron_starting()
                self.register_and_backfill(start, stop)
                self.hooks.cron_started()
                next_minute = ceil_minute(start)
                slept = behind = False
                while not stop.is_set():
                    now = self._now()
                    current = floor_minute(now)
                    if current < next_minute:
                        if slept:
                            logger.debug("cron timer woke early at %s; sleeping again", now)
                        sleep((next_minute - now).total_seconds() + 0.001)
                        slept = True
                        continue
                    if current > next_minute and not behind:
                        logger.warning(
                            "cron is %s behind (clock jump, or a busy or sleeping machine?); "
                            "catching up from %s",
                            now - next_minute,
                            format_cron_ts(next_minute),
                        )
                    behind = current > next_minute
                    self.schedule_minute(next_minute)
                    attempt, slept = 0, False
                    next_minute += MINUTE
            except Exception:
                attempt += 1
                delay = backoff_delay(attempt)
                logger.exception(
                    "cron scheduler failed; restarting in %.1f s (attempt %d)", delay, attempt
                )
                sleep(delay)

    def register_and_backfill(self, start: datetime, stop: threading.Event | None = None) -> None:
        """Record unknown items as known since ``start``, then make the jobs of the known
        items' missed minutes before ``start``, one statement per minute, in order."""
        identifiers = [item.identifier for item in self.items]
        known = {
            identifier: crontab.last_execution or crontab.known_since
            for identifier, crontab in self.store.known_crontabs(identifiers).items()
        }
        unknown = [identifier for identifier in identifiers if identifier not in known]
        if unknown:
            self.store.register_crontabs(unknown, known_since=start)
        # Only items known before this start are backfilled, from their last execution.
        backfills = [
            (item, known[item.identifier]) for item in self.items if item.identifier in known
        ]
        longest = max((item.backfill_period for item, _ in backfills), default=timedelta(0))
        if longest <= timedelta(0):
            return
        ts = ceil_minute(start - longest)
        while ts < start and not (stop is not None and stop.is_set()):
            due = [
                item
                for item, not_before in backfills
                if item.backfill_period >= start - ts and ts >= not_before and item.matches(ts)
            ]
            if due:
                self._schedule(due, ts, backfilled=True)
            ts += MINUTE

    def schedule_minute(self, ts: datetime, *, backfilled: bool = False) -> list[str]:
        """Make the jobs of the items due at the whole minute ``ts``, unless another worker
        made them already; returns the identifiers this call made a job for."""
        if ts.tzinfo is None or ts != floor_minute(ts):
            raise ValueError(f"cron minutes are timezone-aware whole minutes, got {ts}")
        if not backfilled:
            self.hooks.cron_tick(ts)
        return self._schedule([item for item in self.items if item.matches(ts)], ts, backfilled)

    def _schedule(self, due: Sequence[CronItem], ts: datetime, backfilled: bool) -> list[str]:
        if not due:
            return []
        rows = self.store.schedule_cron_jobs(due, ts, backfilled=backfilled)
        scheduled = [identifier for identifier, _ in rows]
        for identifier, job_id in rows:
            self.hooks.cron_job_scheduled(identifier, ts, job_id)
        logger.debug(
            "cron scheduled %d of %d due job(s) for %s",
            len(scheduled),
            len(due),
            format_cron_ts(ts),
            extra={"cron_ts": ts, "identifiers": scheduled, "backfilled": backfilled},
        )
        return scheduled

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ConfigurationError(f"the cron clock must return aware datetimes, got {now}")
        return now.astimezone(UTC)
