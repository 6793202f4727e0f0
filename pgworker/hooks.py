"""Plugins: hook methods called at each step of a worker's and a job's life."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .admin import Admin
from .errors import PgWorkerError
from .hook_results import (
    AfterRun,
    BeforeDefer,
    BeforeRun,
    Complete,
    Fail,
    Reject,
    RewritePayload,
    Skip,
)
from .job import Job
from .spec import JobSpec

logger = logging.getLogger(__name__)

__all__ = [
    "AfterRun",
    "BeforeDefer",
    "BeforeRun",
    "Complete",
    "DeferRejected",
    "DeferSkipped",
    "Fail",
    "Hooks",
    "JobResult",
    "Plugin",
    "Reject",
    "RewritePayload",
    "Skip",
    "WorkerInfo",
]


class DeferRejected(PgWorkerError):
    """A plugin's ``before_defer`` refused the job; nothing was written."""


class DeferSkipped(PgWorkerError):
    """A plugin's ``before_defer`` skipped the job; nothing was written."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """The worker a worker hook is about: its lock-owner id (``locked_by`` of its jobs),
    schema, concurrency and task identifiers, and the admin API of its database."""

    worker_id: str
    schema: str
    concurrency: int
    tasks: tuple[str, ...]
    admin: Admin


@dataclass(frozen=True, slots=True)
class JobResult:
    """What running a job came to, as ``after_job_run`` sees it: ``error`` is None on
    success, else the error text that will be stored."""

    duration_ms: float
    error: str | None
    exception: BaseException | None


class Plugin:
    """Subclass and override the hooks you need; every hook does nothing by default.

    Hooks run in the order plugins were registered (``App(plugins=[...])`` or
    ``app.add_plugin(...)``), on the worker's threads: keep them quick. A hook that
    raises never stops the worker or changes a job's outcome: the error is logged once,
    with the plugin's name, and things go on as if the hook had returned None.

    Interceptors: the first plugin to return a decision wins. ``before_job_run`` stops
    asking there; ``after_job_run`` still shows the result to every plugin. Jobs that
    cron makes are added in SQL: they skip ``before_defer`` (``on_cron_job_scheduled``
    reports them).
    """

    @property
    def name(self) -> str:
        """How logs name this plugin (its class name, by default)."""
        return type(self).__name__

    # -- worker -----------------------------------------------------------------------

    def on_worker_init(self, worker: WorkerInfo) -> None:
        """The worker migrated the schema and registered its tasks."""

    def on_worker_start(self, worker: WorkerInfo) -> None:
        """The worker's threads are running; it is about to fetch."""

    def on_worker_shutdown(self, worker: WorkerInfo) -> None:
        """The worker stopped: every outcome it had is recorded (after a forced stop, once
        the last job still running in the process has returned)."""

    def on_workers_recovered(self, worker_ids: list[str], job_ids: list[int]) -> None:
        """This worker's sweep found ``worker_ids`` dead and gave their jobs back."""

    def on_listen_lost(self, reason: str) -> None:
        """The worker's LISTEN connection died (an error, or no answer to its periodic
        check within seconds) or could not be made: new jobs are found by polling, more
        often than usual, until ``on_listen_restored``."""

    def on_listen_restored(self, seconds_down: float) -> None:
        """The LISTEN connection is back after ``seconds_down`` seconds; new jobs wake
        the worker at once again."""

    # -- jobs -------------------------------------------------------------------------

    def on_job_fetched(self, job: Job) -> None:
        """The worker claimed ``job`` (it may wait in the prefetch buffer)."""

    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        """About to run ``job`` (``payload`` is its JSON, decoded): return Skip() to
        complete it without running, Fail(message) to fail it, None to run it."""
        return None

    def on_job_started(self, job: Job) -> None:
        """The task function is being called."""

    def after_job_run(self, job: Job, result: JobResult) -> AfterRun:
        """The task returned or raised: return Complete() or Fail(message) to decide
        the outcome instead, None to keep it."""
        return None

    def on_job_completed(self, job: Job, duration_ms: float) -> None:
        """The job succeeded and is deleted."""

    def on_job_failed(self, job: Job, error: str, will_retry: bool) -> None:
        """The job failed; ``will_retry`` is False when no attempts are left."""

    def on_job_permanently_failed(self, job: Job, error: str) -> None:
        """The job failed for good (attempts used up, or a payload that can't decode)."""

    def on_job_interrupted(self, job: Job, reason: str) -> None:
        """A stop could not wait for ``job``: its code is still running. It stays locked
        by this worker until the code returns (its outcome is then recorded as usual), or
        is given back when the process exits first."""

    def on_job_overran(self, job: Job, timeout: float) -> None:
        """``job`` still runs long after its timeout (``App(hard_timeout=...)`` seconds
        past it): its code ignores being asked to stop. A worker run by ``pgworker run``
        (or ``app.run()``) then stops, so that a fresh process replaces it."""

    # -- enqueueing -------------------------------------------------------------------

    def before_defer(self, identifier: str, payload: Any, spec: JobSpec) -> BeforeDefer:
        """A job of ``identifier`` is about to be added (once per job of a batch):
        return RewritePayload(p), Skip() or Reject(message), or None."""
        return None

    # -- cron -------------------------------------------------------------------------

    def on_cron_tick(self, moment: datetime) -> None:
        """The cron scheduler is handling the minute ``moment`` (UTC)."""

    def on_cron_job_scheduled(self, identifier: str, moment: datetime, job_id: int) -> None:
        """The cron item ``identifier`` added the job ``job_id`` for the minute ``moment``."""

    # -- graphile-worker's events (cron:starting/started, worker:getJob:empty, resetLocked:*)

    def on_cron_starting(self) -> None:
        """The cron scheduler is starting (again, after an error): it is about to register
        its items and backfill."""

    def on_cron_started(self) -> None:
        """The cron scheduler registered its items and backfilled; it now waits for the
        next minute."""

    def on_fetch_empty(self) -> None:
        """A fetch found no runnable job; the worker waits for a notification or the poll
        interval. Called on every idle poll: keep it cheap."""

    def on_reset_locked_started(self) -> None:
        """The 4-hour stale-lock reset is starting (every 8 to 10 minutes)."""

    def on_reset_locked_finished(self, error: str | None) -> None:
        """The stale-lock reset finished: ``error`` is None on success, else why it failed."""


def _overrides(plugin: Plugin, hook: str) -> bool:
    return getattr(type(plugin), hook) is not getattr(Plugin, hook)


class Hooks:
    """The plugins of an app, and the safe way to call their hooks."""

    def __init__(self, plugins: Iterable[Plugin] = ()) -> None:
        self.plugins: list[Plugin] = []
        self._by_hook: dict[str, list[Callable[..., Any]]] = {}
        for plugin in plugins:
            self.add(plugin)

    def add(self, plugin: Plugin) -> None:
        """Register ``plugin`` after the others."""
        if not isinstance(plugin, Plugin):
            raise TypeError(f"plugins must subclass pgworker.Plugin, got {plugin!r}")
        self.plugins.append(plugin)
        for hook in vars(Plugin):
            if not hook.startswith("_") and hook != "name" and _overrides(plugin, hook):
                self._by_hook.setdefault(hook, []).append(getattr(plugin, hook))

    def listens(self, *hooks: str) -> bool:
        """Whether any plugin has one of ``hooks`` (hot paths skip the calls otherwise:
        asked once per batch, so a plugin added meanwhile is heard from the next)."""
        by_hook = self._by_hook
        return any(hook in by_hook for hook in hooks)

    # -- worker -----------------------------------------------------------------------

    def worker_init(self, worker: WorkerInfo) -> None:
        """Tell the plugins the worker is ready to start its threads."""
        self._observe("on_worker_init", worker)

    def worker_start(self, worker: WorkerInfo) -> None:
        """Tell the plugins the worker's threads are running."""
        self._observe("on_worker_start", worker)

    def worker_shutdown(self, worker: WorkerInfo) -> None:
        """Tell the plugins the worker has stopped."""
        self._observe("on_worker_shutdown", worker)

    def workers_recovered(self, worker_ids: list[str], job_ids: list[int]) -> None:
        """Tell the plugins a sweep took jobs back from dead workers."""
        self._observe("on_workers_recovered", worker_ids, job_ids)

    def listen_lost(self, reason: str) -> None:
        """Tell the plugins the LISTEN connection is down."""
        self._observe("on_listen_lost", reason)

    def listen_restored(self, seconds_down: float) -> None:
        """Tell the plugins the LISTEN connection is back."""
        self._observe("on_listen_restored", seconds_down)

    # -- jobs -------------------------------------------------------------------------

    def job_fetched(self, job: Job) -> None:
        """Tell the plugins ``job`` was claimed."""
        self._observe("on_job_fetched", job)

    @property
    def intercepts_run(self) -> bool:
        """Whether any plugin has ``before_job_run`` (callers skip decoding otherwise)."""
        return "before_job_run" in self._by_hook

    @property
    def inspects_result(self) -> bool:
        """Whether any plugin has ``after_job_run``."""
        return "after_job_run" in self._by_hook

    @property
    def intercepts_defer(self) -> bool:
        """Whether any plugin has ``before_defer``."""
        return "before_defer" in self._by_hook

    def before_job_run(self, job: Job, payload: Any) -> Skip | Fail | None:
        """The first plugin decision on running ``job``; later plugins are not asked."""
        decision: Skip | Fail | None = self._decide("before_job_run", (Skip, Fail), (job, payload))
        return decision

    def job_started(self, job: Job) -> None:
        """Tell the plugins ``job``'s function is being called."""
        self._observe("on_job_started", job)

    def after_job_run(self, job: Job, result: JobResult) -> Complete | Fail | None:
        """The first plugin decision on ``job``'s outcome; every plugin sees the result."""
        decision: Complete | Fail | None = self._decide(
            "after_job_run", (Complete, Fail), (job, result), every=True
        )
        return decision

    def job_completed(self, job: Job, duration_ms: float) -> None:
        """Tell the plugins ``job`` succeeded."""
        self._observe("on_job_completed", job, duration_ms)

    def job_failed(self, job: Job, error: str, *, will_retry: bool) -> None:
        """Tell the plugins ``job`` failed, and whether it will be retried."""
        self._observe("on_job_failed", job, error, will_retry)

    def job_permanently_failed(self, job: Job, error: str) -> None:
        """Tell the plugins ``job`` failed for good."""
        self._observe("on_job_permanently_failed", job, error)

    def job_interrupted(self, job: Job, reason: str) -> None:
        """Tell the plugins a stop could not wait for ``job``."""
        self._observe("on_job_interrupted", job, reason)

    def job_overran(self, job: Job, timeout: float) -> None:
        """Tell the plugins ``job`` ignores its timeout."""
        self._observe("on_job_overran", job, timeout)

    # -- cron -------------------------------------------------------------------------

    def cron_tick(self, moment: datetime) -> None:
        """Tell the plugins the scheduler is handling the minute ``moment``."""
        self._observe("on_cron_tick", moment)

    def cron_job_scheduled(self, identifier: str, moment: datetime, job_id: int) -> None:
        """Tell the plugins cron item ``identifier`` added ``job_id``."""
        self._observe("on_cron_job_scheduled", identifier, moment, job_id)

    # -- graphile-worker's events -------------------------------------------------------

    def cron_starting(self) -> None:
        """Tell the plugins the cron scheduler is starting."""
        self._observe("on_cron_starting")

    def cron_started(self) -> None:
        """Tell the plugins the cron scheduler registered and backfilled."""
        self._observe("on_cron_started")

    def fetch_empty(self) -> None:
        """Tell the plugins a fetch found nothing."""
        self._observe("on_fetch_empty")

    def reset_locked_started(self) -> None:
        """Tell the plugins the stale-lock reset is starting."""
        self._observe("on_reset_locked_started")

    def reset_locked_finished(self, error: str | None) -> None:
        """Tell the plugins the stale-lock reset finished (``error`` None on success)."""
        self._observe("on_reset_locked_finished", error)

    # -- calling ----------------------------------------------------------------------

    def _observe(self, hook: str, *args: Any) -> None:
        for method in self._by_hook.get(hook, ()):
            self._call(method, hook, args)

    def _decide(
        self, hook: str, allowed: tuple[type, ...], args: tuple[Any, ...], *, every: bool = False
    ) -> Any:
        """The first decision of an ``allowed`` type wins. Without ``every``, plugins
        after it are not asked; with it, they still see the call (their decisions are
        ignored). Other return values are logged and ignored."""
        chosen = None
        for method in self._by_hook.get(hook, ()):
            decision = self._call(method, hook, args)
            if decision is None:
                continue
            if not isinstance(decision, allowed):
                logger.warning(
                    "Plugin %s returned %r from %s, which expects one of %s or None; ignored",
                    _owner_name(method),
                    decision,
                    hook,
                    ", ".join(t.__name__ for t in allowed),
                )
                continue
            if chosen is None:
                chosen = decision
                if not every:
                    break
        return chosen

    def before_defer(self, identifier: str, payload: Any, spec: JobSpec) -> Any:
        """Run every ``before_defer``, threading rewritten payloads through; returns the
        payload to defer, or raises DeferSkipped / DeferRejected."""
        for method in self._by_hook.get("before_defer", ()):
            decision = self._call(method, "before_defer", (identifier, payload, spec))
            if isinstance(decision, RewritePayload):
                payload = decision.payload
            elif isinstance(decision, Skip):
                raise DeferSkipped(f"a plugin skipped the {identifier!r} job")
            elif isinstance(decision, Reject):
                raise DeferRejected(f"{identifier!r} job rejected: {decision.message}")
        return payload

    @staticmethod
    def _call(method: Callable[..., Any], hook: str, args: tuple[Any, ...]) -> Any:
        try:
            return method(*args)
        except Exception:
            logger.exception(
                "Plugin %s failed in %s; carrying on as if it returned None",
                _owner_name(method),
                hook,
            )
            return None


def _owner_name(method: Callable[..., Any]) -> str:
    owner = getattr(method, "__self__", None)
    return owner.name if isinstance(owner, Plugin) else repr(method)
