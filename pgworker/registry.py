"""Registry: the App's tasks, cron table, plugins and extensions, and how they are added."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from .context import Extensions
from .cron import Cron, CronItem, parse_crontab
from .errors import ConfigurationError
from .hooks import Hooks, Plugin
from .retries import Backoff, check_backoff
from .settings import ForbiddenFlags, resolve_forbidden_flags
from .spec import JobSpec, check_task_identifier
from .task import Task

if TYPE_CHECKING:
    from .app import App

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class Registry:
    """What an App is made of besides its settings: the tasks registered with
    ``task()``, the cron table, the plugins, the extensions and the forbidden flags."""

    tasks: dict[str, Task[Any, Any, Any]]
    cron_items: list[CronItem]
    hooks: Hooks
    extensions: Extensions
    forbidden_flags: ForbiddenFlags

    def cron(self, item: Cron | CronItem) -> CronItem:
        """Add a recurring job (a ``Cron`` builder or a built ``CronItem``); every worker
        of this app schedules it, and each minute becomes exactly one job."""
        built = item.build() if isinstance(item, Cron) else item
        if any(existing.identifier == built.identifier for existing in self.cron_items):
            raise ConfigurationError(
                f"the cron table already has an item {built.identifier!r}: give this one another id"
            )
        self.cron_items.append(built)
        return built

    def add_crontab(self, text: str, *, source: str = "crontab") -> list[CronItem]:
        """Add the items of a crontab text; errors name the line (``source`` names the
        file in them)."""
        return [self.cron(item) for item in parse_crontab(text, source=source)]

    def add_plugin(self, plugin: Plugin) -> None:
        """Register ``plugin``; its hooks run after those of the plugins before it."""
        self.hooks.add(plugin)

    def add_extension(self, extension: object) -> None:
        """Make ``extension`` available to tasks as ``ctx.get_ext(type(extension))``."""
        self.extensions.add(extension)

    def current_forbidden_flags(self) -> list[str] | None:
        """The forbidden flags for the next fetch (calls ``forbidden_flags`` if callable,
        and awaits what an async one returns)."""
        return resolve_forbidden_flags(self.forbidden_flags)

    def task(
        self,
        identifier: str,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        flags: Sequence[str] | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[Callable[Concatenate[T, P], R]], Task[T, P, R]]:
        """Register the decorated function as the task ``identifier``.

        ``queue``, ``priority``, ``max_attempts`` and ``flags`` are defaults for every job
        of this task; ``defer`` can override each of them. ``timeout`` (seconds; default
        the app's ``default_timeout``) limits one run: an async task is cancelled at its
        deadline, a sync one is asked to stop (``ctx.cancelled``, ``ctx.check()``); a job
        that ends by it fails with "Timed out after N s" and is retried as usual.

        ``backoff`` is the task's own wait before a retry: a function of the attempts
        made so far (1 after the first failure) giving seconds or a timedelta, used
        when a pgworker worker fails the task's job (a Node or Rust worker running it
        uses graphile-worker's ``exp(least(attempts, 10))`` seconds, the default here).
        A task can also decide its job's fate as it runs: see ``Retry``, ``Snooze``,
        ``PermanentFailure`` and ``BatchResult``.
        """
        check_task_identifier(identifier)
        if identifier in self.tasks:
            raise ConfigurationError(f"task {identifier!r} is already registered on this app")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"task {identifier!r}: timeout must be positive seconds")
        if backoff is not None:
            check_backoff(identifier, backoff)
        defaults = JobSpec(queue=queue, priority=priority, max_attempts=max_attempts, flags=flags)

        def register(fn: Callable[Concatenate[T, P], R]) -> Task[T, P, R]:
            task = Task(
                cast("App", self),
                identifier,
                fn,
                defaults=defaults,
                timeout=timeout,
                backoff=backoff,
            )
            self.tasks[identifier] = task
            return task

        return register
