"""Task: a function registered on an App, with its payload type and ``defer``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from .context import JobContext
from .errors import ConfigurationError, PgWorkerError
from .job import Job
from .payload import PayloadCodec
from .spec import JobKeyMode, JobSpec

if TYPE_CHECKING:
    from .app import App
    from .retries import Backoff
    from .store import Connection

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[T, P, R]):
    """A task: call it like the function it wraps, or ``defer`` it to run on a worker.

    The annotation of the function's first parameter is the payload type; a second
    parameter, if there is one, receives the JobContext. The function may be an
    ``async def`` (``is_async``): a worker then awaits it on its event loop.
    """

    def __init__(
        self,
        app: App,
        identifier: str,
        fn: Callable[Concatenate[T, P], R],
        *,
        defaults: JobSpec,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.app = app
        self.identifier = identifier
        self.fn = fn
        self.defaults = defaults.validate()
        self.timeout = timeout
        self.backoff = backoff
        self.is_async = _check_runnable(identifier, fn)
        payload_type, self.takes_context = _inspect_signature(identifier, fn)
        self.codec: PayloadCodec[T] = PayloadCodec(payload_type)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", identifier)
        self.__wrapped__ = fn

    @property
    def payload_type(self) -> Any:
        """The type payloads are checked against and decoded into."""
        return self.codec.payload_type

    def __call__(self, payload: T, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly: no job, no database (for tests and scripts).

        Like the function itself, an async task returns a coroutine: ``await`` it (or
        ``asyncio.run`` it).
        """
        return self.fn(payload, *args, **kwargs)

    def defer(
        self,
        payload: T | Mapping[str, Any],
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        job_key_mode: JobKeyMode | None = None,
        flags: Sequence[str] | None = None,
        conn: Connection | None = None,
    ) -> Job:
        """Enqueue one job of this task and return it.

        ``payload`` is checked against the payload type first: a mismatch raises
        PayloadError and writes nothing. ``delay`` (seconds or a timedelta from now)
        may stand in for ``run_at``. With ``conn``, the job is added in that
        connection's current transaction and vanishes if the caller rolls back.
        """
        spec = JobSpec(
            queue=queue,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            flags=flags,
            delay=delay,
        )
        return self.app.add_job(self.identifier, payload, spec, conn=conn)

    async def adefer(
        self,
        payload: T | Mapping[str, Any],
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        job_key_mode: JobKeyMode | None = None,
        flags: Sequence[str] | None = None,
    ) -> Job:
        """``defer`` for async code (an async task, an async web handler): awaitable,
        without blocking the event loop.

        It runs ``defer`` in a thread (``asyncio.to_thread``), which borrows a connection
        from the app's pool for the length of the insert. The payload is checked as by
        ``defer``; it cannot join a transaction (use ``defer`` with ``conn=`` for that).
        """
        spec = JobSpec(
            queue=queue,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            flags=flags,
            delay=delay,
        )
        return await asyncio.to_thread(self.app.add_job, self.identifier, payload, spec)

    def defer_many(
        self,
        payloads: Iterable[T | Mapping[str, Any]],
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        flags: Sequence[str] | None = None,
        conn: Connection | None = None,
    ) -> list[Job]:
        """Enqueue one job per payload, all with the same options, in one transaction.

        Every payload is checked before anything is sent: one bad payload raises
        PayloadError and writes nothing. Returns the jobs in the order of ``payloads``
        (less any that a plugin's ``before_defer`` skipped).
        """
        options = JobSpec(
            queue=queue,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            flags=flags,
            delay=delay,
        )
        return self.app.defer_uniform(self.identifier, payloads, options, conn)

    def call(self, payload: T, ctx: JobContext | None) -> R:
        """Call a sync task's function as a worker does: with the context if it takes one.

        Raises PgWorkerError, without calling anything, for an async task, and
        ConfigurationError if the function, though not an ``async def``, returned a
        coroutine (a sync decorator around an async function): the work did not happen.
        """
        if self.is_async:
            raise PgWorkerError(
                f"task {self.identifier!r} is an async def: a worker must await call_async() "
                "on its event loop, not call()"
            )
        result: R = self._invoke(payload, ctx)
        if inspect.iscoroutine(result):
            result.close()
            raise ConfigurationError(
                f"task {self.identifier!r}: {_describe(self.fn)} returned a coroutine, which "
                "was not run. Is it a sync decorator around an async def? Make the wrapper "
                "an async def too"
            )
        return result

    def call_async(self, payload: T, ctx: JobContext | None) -> Awaitable[Any]:
        """Call an async task's function as a worker does and return its coroutine, for
        the worker's event loop to await. Raises PgWorkerError for a sync task."""
        if not self.is_async:
            raise PgWorkerError(
                f"task {self.identifier!r} is not an async def: a worker must run call() "
                "in an executor thread, not call_async()"
            )
        result: Awaitable[Any] = self._invoke(payload, ctx)
        return result

    def _invoke(self, payload: T, ctx: JobContext | None) -> Any:
        call: Callable[..., Any] = self.fn
        if self.takes_context:
            return call(payload, ctx)
        return call(payload)

    def __repr__(self) -> str:
        return f"<Task {self.identifier!r} payload={self.codec.payload_type!r}>"


def _check_runnable(identifier: str, fn: object) -> bool:
    """Refuse what a worker could call without running any work; return whether ``fn``
    is async (an ``async def``, a partial of one, or an object whose ``__call__`` is one)."""
    if not callable(fn):
        raise ConfigurationError(
            f"task {identifier!r}: {fn!r} is not callable; register a function"
        )
    target = _call_target(fn)
    if inspect.isclass(target):
        raise ConfigurationError(
            f"task {identifier!r}: {_describe(fn)} is a class, and calling it would only "
            "build an instance; register a function, or an instance whose __call__ does "
            "the work"
        )
    if inspect.isasyncgenfunction(target):
        raise ConfigurationError(
            f"task {identifier!r}: {_describe(fn)} is an async generator function (an "
            "async def with yield): calling it runs none of its body. Drop the yield"
        )
    if inspect.isgeneratorfunction(target):
        raise ConfigurationError(
            f"task {identifier!r}: {_describe(fn)} is a generator function (a def with "
            "yield): calling it runs none of its body. Drop the yield"
        )
    return inspect.iscoroutinefunction(target)


def _call_target(fn: object) -> object:
    """What calling ``fn`` really calls: through partials, to ``__call__`` of an instance."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isroutine(fn) or inspect.isclass(fn):
        return fn
    return type(fn).__call__


def _describe(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def _inspect_signature(identifier: str, fn: Callable[..., Any]) -> tuple[Any, bool]:
    """Return the payload type and whether ``fn`` takes a context argument."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"task {identifier!r}: cannot read the signature of {_describe(fn)}: {exc}; "
            "wrap it in a def"
        ) from exc
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise ConfigurationError(
            f"task {identifier!r}: the function must take (payload) or (payload, ctx), "
            f"not {len(params)} positional parameters"
        )
    try:
        hints = typing.get_type_hints(_call_target(fn))
    except Exception as exc:
        raise ConfigurationError(
            f"task {identifier!r}: cannot resolve the annotations of {fn!r}: {exc}"
        ) from exc
    return hints.get(params[0].name, Any), len(params) == 2
