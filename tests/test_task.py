"""Task registration: what a task function may be and how async ones are told apart, with
no database (an App connects only when it opens)."""

from __future__ import annotations

import asyncio
import functools
import gc
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, cast

import msgspec
import pytest

from pgworker import App, ConfigurationError, JobContext, PgWorkerError
from pgworker.aio import AsyncRunner

#: Stands in for the context a worker passes; these tasks only hand it back.
CTX = cast(JobContext, object())


class Greeting(msgspec.Struct):
    name: str


@pytest.fixture
def app() -> App:
    return App(database_url="postgresql://unused.invalid/never")


async def greet(payload: Greeting, ctx: JobContext) -> str:
    await asyncio.sleep(0)
    return f"hello {payload.name}"


def greet_sync(payload: Greeting) -> str:
    return f"hi {payload.name}"


class AsyncGreeter:
    async def __call__(self, payload: Greeting) -> str:
        return f"hey {payload.name}"


class SyncGreeter:
    def __call__(self, payload: Greeting, ctx: JobContext) -> str:
        return f"yo {payload.name}"


async def send(prefix: str, payload: Greeting) -> str:
    return f"{prefix} {payload.name}"


class Mailer:
    async def send(self, payload: Greeting) -> str:
        return f"mail {payload.name}"


@pytest.mark.parametrize(
    ("fn", "is_async", "takes_context"),
    [
        pytest.param(greet, True, True, id="async def"),
        pytest.param(greet_sync, False, False, id="def"),
        pytest.param(functools.partial(send, "dear"), True, False, id="partial of async def"),
        pytest.param(
            functools.partial(functools.partial(send), "dear"), True, False, id="nested partial"
        ),
        pytest.param(AsyncGreeter(), True, False, id="object with async __call__"),
        pytest.param(SyncGreeter(), False, True, id="object with sync __call__"),
        pytest.param(Mailer().send, True, False, id="bound async method"),
    ],
)
def test_a_task_knows_whether_its_function_is_async(
    app: App, fn: Callable[..., Any], is_async: bool, takes_context: bool
) -> None:
    task = app.task("greet")(fn)
    assert task.is_async is is_async
    assert task.takes_context is takes_context
    assert task.payload_type is Greeting


def test_calling_an_async_task_directly_returns_its_coroutine(app: App) -> None:
    task = app.task("greet")(greet)
    coro = task(Greeting("ada"), CTX)
    assert asyncio.iscoroutine(coro)
    assert asyncio.run(coro) == "hello ada"


def test_call_async_returns_the_coroutine_a_worker_awaits(app: App) -> None:
    with_context = app.task("greet")(greet)
    without = app.task("greeter")(AsyncGreeter())
    assert asyncio.run(_await(with_context.call_async(Greeting("ada"), CTX))) == "hello ada"
    assert asyncio.run(_await(without.call_async(Greeting("bob"), CTX))) == "hey bob"


async def _await(awaitable: Any) -> Any:
    return await awaitable


def test_an_async_task_runs_on_the_async_runner(app: App) -> None:
    task = app.task("greet")(greet)
    with AsyncRunner(limit=1, name="test-task-runner") as runner:
        assert runner.try_acquire() == 1
        handle = runner.submit(lambda: task.call_async(Greeting("cy"), CTX), timeout=5)
        assert handle.result(timeout=5) == "hello cy"


def test_call_and_call_async_refuse_the_other_kind_of_task(app: App) -> None:
    async_task = app.task("greet")(greet)
    sync_task = app.task("greet_sync")(greet_sync)
    with pytest.raises(PgWorkerError, match="'greet' is an async def"):
        _ = async_task.call(Greeting("ada"), CTX)
    with pytest.raises(PgWorkerError, match="'greet_sync' is not an async def"):
        sync_task.call_async(Greeting("ada"), CTX)
    assert sync_task.call(Greeting("ada"), CTX) == "hi ada"


def test_a_sync_wrapper_that_returns_a_coroutine_fails_instead_of_dropping_it(app: App) -> None:
    def logged(
        fn: Callable[[Greeting], Coroutine[Any, Any, str]],
    ) -> Callable[[Greeting], Coroutine[Any, Any, str]]:
        @functools.wraps(fn)
        def wrapper(payload: Greeting) -> Coroutine[Any, Any, str]:
            return fn(payload)

        return wrapper

    @app.task("wrapped")
    @logged
    async def wrapped(payload: Greeting) -> str:
        return payload.name

    assert not wrapped.is_async
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigurationError, match="returned a coroutine, which was not run"):
            _ = wrapped.call(Greeting("ada"), CTX)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def numbers(payload: dict[str, int]) -> Iterator[int]:
    yield payload["n"]


async def async_numbers(payload: dict[str, int]) -> AsyncIterator[int]:
    yield payload["n"]


class Job:
    def __init__(self, payload: dict[str, int]) -> None:
        self.payload = payload


class YieldingCallable:
    def __call__(self, payload: dict[str, int]) -> Iterator[int]:
        yield payload["n"]


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        pytest.param(numbers, "numbers is a generator function", id="generator"),
        pytest.param(
            async_numbers, "async_numbers is an async generator function", id="async generator"
        ),
        pytest.param(
            functools.partial(numbers), "is a generator function", id="partial of a generator"
        ),
        pytest.param(YieldingCallable(), "is a generator function", id="__call__ yields"),
        pytest.param(Job, "Job is a class", id="class"),
        pytest.param(functools.partial(Job), "is a class", id="partial of a class"),
        pytest.param("send_email", "'send_email' is not callable", id="a string"),
        pytest.param(None, "None is not callable", id="None"),
    ],
)
def test_registration_refuses_what_a_worker_could_not_run(app: App, fn: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        app.task("refused")(fn)
    assert "task 'refused'" in str(info.value)
    assert "refused" not in app.tasks


def test_a_function_without_a_readable_signature_is_refused(app: App) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the signature"):
        app.task("builtin")(getattr)


def test_async_tasks_keep_the_signature_checks(app: App) -> None:
    async def too_many(a: int, b: int, c: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="3 positional parameters"):
        app.task("too_many")(too_many)
