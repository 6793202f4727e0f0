"""Plugins: hook methods called at each step of a worker's and a job's life."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import PgWorkerError
from .job import Job
from .spec import JobSpec

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Skip:
    """From ``before_job_run``: don't run the job, complete it (it is deleted).
    From ``before_defer``: don't add the job (``defer`` raises DeferSkipped)."""


@dataclass(frozen=True, slots=True)
class Complete:
    """From ``after_job_run``: record the job as a success, whatever happened."""


@dataclass(frozen=True, slots=True)
class Fail:
    """From ``before_job_run`` or ``after_job_run``: record the job as failed with
    ``message``; it is retried like any failure, while attempts remain."""

    message: str


@dataclass(frozen=True, slots=True)
class RewritePayload:
    """From ``before_defer``: defer ``payload`` instead of the one given (it is then
    checked against the task's payload type as usual)."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Reject:
    """From ``before_defer``: refuse the defer; the caller gets DeferRejected(message)."""

    message: str


#: What ``before_job_run`` may return; None means "carry on".
BeforeRun = Skip | Fail | None
#: What ``after_job_run`` may return; None keeps the outcome.
AfterRun = Complete | Fail | None
#: What ``before_defer`` may return; None defers the payload as given.
BeforeDefer = RewritePayload | Skip | Reject | None


class DeferRejected(PgWorkerError):
    """A plugin's ``before_defer`` refused the job; nothing was written."""


class DeferSkipped(PgWorkerError):
    """A plugin's ``before_defer`` skipped the job; nothing was written."""


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

    def on_worker_init(self, worker: Worker) -> None:
        """The worker migrated the schema and registered its tasks."""

    def on_worker_start(self, worker: Worker) -> None:
        """The worker's threads are running; it is about to fetch."""

    def on_worker_shutdown(self, worker: Worker) -> None:
        """The worker stopped: every outcome it had is recorded."""

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
        """A forced stop cut the job off; it is given back to the queue."""

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

    def has(self, hook: str) -> bool:
        """Whether any plugin overrides ``hook`` (so the caller can skip its own work)."""
        return hook in self._by_hook

    def notify(self, hook: str, *args: Any) -> None:
        """Call an observer hook on every plugin that has it."""
        for method in self._by_hook.get(hook, ()):
            self._call(method, hook, args)

    def decide(self, hook: str, allowed: tuple[type, ...], *args: Any, every: bool = False) -> Any:
        """Call an interceptor hook on each plugin; the first decision of an ``allowed``
        type wins. Without ``every``, plugins after it are not asked; with it, they still
        see the call (their decisions are ignored). Other return values are logged and
        ignored."""
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
