"""AsyncRunner: results, failures, cancellation, timeouts and slots, with no database."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from pgworker import JobTimeoutError, PgWorkerError, aio
from pgworker.aio import AsyncHandle, AsyncRunner

_names = itertools.count()


def loop_threads(runner: AsyncRunner) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == runner.name]


@pytest.fixture
def runner() -> Iterator[AsyncRunner]:
    """A started runner with 10 slots, stopped (cancelling what is left) afterwards."""
    runner = AsyncRunner(limit=10, name=f"test-async-{next(_names)}")
    runner.start()
    yield runner
    runner.stop(timeout=5, cancel=True)
    assert not loop_threads(runner)


def run(runner: AsyncRunner, coro_fn: object, **options: object) -> AsyncHandle[object]:
    """Reserve one slot and submit ``coro_fn`` in it."""
    assert runner.try_acquire() == 1
    return runner.submit(coro_fn, **options)  # type: ignore[arg-type]


def test_a_coroutine_returns_its_result_and_frees_its_slot(runner: AsyncRunner) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    assert run(runner, lambda: double(21)).result(timeout=5) == 42
    assert runner.free_slots == 10
    assert runner.running == 0


def test_the_coroutine_runs_on_the_loop_thread(runner: AsyncRunner) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert run(runner, where).result(timeout=5) == runner.name


def test_an_exception_reaches_the_handle_and_the_loop_keeps_running(runner: AsyncRunner) -> None:
    async def boom() -> None:
        raise ValueError("no such user")

    handle = run(runner, boom)
    with pytest.raises(ValueError, match="no such user"):
        handle.result(timeout=5)
    assert isinstance(handle.exception(), ValueError)
    assert not handle.cancelled()
    assert not handle.timed_out()

    async def fine() -> str:
        return "still here"

    assert run(runner, fine).result(timeout=5) == "still here"


def test_exceptions_that_would_end_the_loop_become_job_failures(runner: AsyncRunner) -> None:
    async def exits() -> None:
        raise SystemExit(3)

    async def interrupts() -> None:
        raise KeyboardInterrupt

    for coro_fn in (exits, interrupts):
        with pytest.raises(PgWorkerError, match="cannot stop the worker"):
            run(runner, coro_fn).result(timeout=5)
    assert len(loop_threads(runner)) == 1

    async def fine() -> int:
        return 1

    assert run(runner, fine).result(timeout=5) == 1


def test_a_coroutine_stopping_the_loop_does_not_end_the_runner(
    runner: AsyncRunner, caplog: pytest.LogCaptureFixture
) -> None:
    async def stops_the_loop() -> str:
        asyncio.get_running_loop().stop()
        return "stopped it"

    assert run(runner, stops_the_loop).result(timeout=5) == "stopped it"

    async def fine() -> int:
        return 2

    assert run(runner, fine).result(timeout=5) == 2
    assert "stopped the async event loop" in caplog.text


def test_a_factory_that_fails_or_returns_no_awaitable_fails_its_handle(
    runner: AsyncRunner,
) -> None:
    def broken() -> asyncio.Future[None]:
        raise LookupError("no coroutine for you")

    with pytest.raises(LookupError):
        run(runner, broken).result(timeout=5)
    with pytest.raises(TypeError, match="not an awaitable"):
        run(runner, lambda: 42).result(timeout=5)
    assert runner.free_slots == 10


def test_cancel_stops_the_coroutine_and_settles_after_it_unwound(runner: AsyncRunner) -> None:
    started = threading.Event()
    cleaned_up = threading.Event()

    async def waits_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)
            cleaned_up.set()

    handle = run(runner, waits_forever)
    assert started.wait(5)
    assert runner.cancel(handle)
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result(timeout=5)
    assert handle.cancelled()
    assert cleaned_up.is_set()
    assert runner.free_slots == 10
    assert not runner.cancel(handle)


def test_a_coroutine_that_catches_cancellation_reports_what_it_did(runner: AsyncRunner) -> None:
    started = threading.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "rolled back"
        return "finished"

    handle = run(runner, stubborn)
    assert started.wait(5)
    runner.cancel(handle)
    assert handle.result(timeout=5) == "rolled back"
    assert not handle.cancelled()


def test_a_cancel_before_the_coroutine_starts_never_creates_it(runner: AsyncRunner) -> None:
    blocking = threading.Event()
    gate = threading.Event()
    created: list[str] = []

    async def blocks_the_loop() -> None:
        blocking.set()
        gate.wait(5)  # deliberately synchronous: nothing else runs on the loop meanwhile

    async def never() -> None:
        created.append("ran")

    def make_never() -> object:
        created.append("created")
        return never()

    first = run(runner, blocks_the_loop)
    assert blocking.wait(5)
    second = run(runner, make_never)
    assert runner.cancel(second)
    gate.set()
    first.result(timeout=5)
    with pytest.raises(concurrent.futures.CancelledError):
        second.result(timeout=5)
    assert created == []


def test_a_timeout_cancels_the_coroutine_and_says_so(runner: AsyncRunner) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handle = run(runner, slow, timeout=0.1)
    with pytest.raises(JobTimeoutError, match=r"timed out after 0\.1 s") as info:
        handle.result(timeout=5)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.1
    assert handle.timed_out()
    assert not handle.cancelled()
    assert cancelled.is_set()


def test_a_coroutines_own_timeout_error_is_not_reported_as_the_jobs(runner: AsyncRunner) -> None:
    async def own_timeout() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    handle = run(runner, own_timeout, timeout=5)
    with pytest.raises(TimeoutError) as info:
        handle.result(timeout=5)
    assert not isinstance(info.value, JobTimeoutError)
    assert not handle.timed_out()


def test_a_fast_coroutine_under_a_timeout_just_finishes(runner: AsyncRunner) -> None:
    async def quick() -> str:
        return "done"

    assert run(runner, quick, timeout=1).result(timeout=5) == "done"


def test_bad_timeouts_are_refused(runner: AsyncRunner) -> None:
    async def nothing() -> None:
        pass

    runner.try_acquire()
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            runner.submit(nothing, timeout=bad)
    runner.release()


def test_slots_are_reserved_used_and_released() -> None:
    async def wait_for(event: asyncio.Event) -> None:
        await event.wait()

    with AsyncRunner(limit=3, name=f"test-async-{next(_names)}") as runner:
        assert runner.free_slots == 3
        assert runner.try_acquire(5) == 3
        assert runner.free_slots == 0
        assert runner.try_acquire() == 0
        runner.release()
        assert runner.free_slots == 1
        with pytest.raises(ValueError, match="2 are reserved"):
            runner.release(3)

        gate = asyncio.Event()
        handles = [runner.submit(lambda: wait_for(gate)) for _ in range(2)]
        assert runner.running == 2
        assert runner.free_slots == 1
        with pytest.raises(RuntimeError, match="try_acquire"):
            runner.submit(lambda: wait_for(gate))

        runner.cancel(handles[0])
        with pytest.raises(concurrent.futures.CancelledError):
            handles[0].result(timeout=5)
        assert runner.free_slots == 2
        assert runner._loop is not None
        runner._loop.call_soon_threadsafe(gate.set)
        handles[1].result(timeout=5)
        assert runner.free_slots == 3


def test_waiting_coroutines_hold_no_thread_200_sleeps_take_about_a_second() -> None:
    async def sleep_one_second(i: int) -> int:
        await asyncio.sleep(1)
        return i

    with AsyncRunner(limit=200, name=f"test-async-{next(_names)}") as runner:
        threads_before = threading.active_count()
        began = time.monotonic()
        assert runner.try_acquire(200) == 200
        handles = [runner.submit(functools.partial(sleep_one_second, i)) for i in range(200)]
        assert threading.active_count() <= threads_before  # no thread per coroutine
        results = [handle.result(timeout=10) for handle in handles]
        elapsed = time.monotonic() - began
    assert results == list(range(200))
    assert elapsed < 5, f"200 one-second sleeps took {elapsed:.1f} s"


def test_done_callbacks_see_the_handle_and_their_errors_are_logged(
    runner: AsyncRunner, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[object] = []
    called = threading.Event()

    async def answer() -> int:
        return 7

    def record(handle: AsyncHandle[object]) -> None:
        seen.append(handle.result())
        called.set()

    def broken(handle: AsyncHandle[object]) -> None:
        raise RuntimeError("callback bug")

    handle = run(runner, answer)
    handle.add_done_callback(broken)
    handle.add_done_callback(record)
    assert called.wait(5)
    assert seen == [7]
    assert "callback bug" in caplog.text

    late: list[object] = []
    handle.add_done_callback(lambda h: late.append(h))
    assert late == [handle]


def test_stop_waits_for_running_coroutines_and_joins_the_thread() -> None:
    async def slowish() -> str:
        await asyncio.sleep(0.2)
        return "finished"

    runner = AsyncRunner(limit=2, name=f"test-async-{next(_names)}")
    runner.start()
    assert len(loop_threads(runner)) == 1
    handle = run(runner, slowish)
    assert runner.stop() is True
    assert handle.result(timeout=0) == "finished"
    assert not loop_threads(runner)
    assert runner.stop() is True


def test_stop_with_cancel_cancels_running_coroutines() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    runner = AsyncRunner(limit=2, name=f"test-async-{next(_names)}")
    runner.start()
    handle = run(runner, forever)
    assert runner.stop(timeout=5, cancel=True) is True
    assert handle.cancelled()
    assert not loop_threads(runner)


def test_stop_cancels_what_is_still_running_after_its_timeout() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    runner = AsyncRunner(limit=2, name=f"test-async-{next(_names)}")
    runner.start()
    handle = run(runner, forever)
    began = time.monotonic()
    assert runner.stop(timeout=0.1) is False
    assert time.monotonic() - began < 1
    assert handle.cancelled()
    assert not loop_threads(runner)


def test_stop_gives_up_on_a_coroutine_that_ignores_cancellation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aio, "CANCEL_GRACE", 0.1)
    finalized = threading.Event()

    async def deaf() -> None:
        try:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(10)
        finally:
            finalized.set()

    runner = AsyncRunner(limit=2, name=f"test-async-{next(_names)}")
    runner.start()
    handle = run(runner, deaf)
    with caplog.at_level(logging.WARNING, logger="pgworker.aio"):
        assert runner.stop(timeout=0.1) is False
    with pytest.raises(PgWorkerError, match="stopped before this coroutine finished"):
        handle.result(timeout=0)
    assert finalized.is_set()
    assert "still running 0.1 s after stop" in caplog.text
    assert not loop_threads(runner)


def test_stop_from_the_loop_thread_is_refused_rather_than_deadlocking(
    runner: AsyncRunner,
) -> None:
    gate = threading.Event()
    threads: list[str] = []
    errors: list[RuntimeError] = []
    called = threading.Event()

    async def waits_for_the_callback() -> None:
        await asyncio.to_thread(gate.wait, 5)

    def stop_from_callback(handle: AsyncHandle[object]) -> None:
        threads.append(threading.current_thread().name)
        try:
            runner.stop()
        except RuntimeError as exc:
            errors.append(exc)
        called.set()

    handle = run(runner, waits_for_the_callback)
    handle.add_done_callback(stop_from_callback)
    gate.set()
    assert called.wait(5)
    assert threads == [runner.name]
    assert len(errors) == 1
    assert "called on its own loop thread" in str(errors[0])
    assert runner.free_slots == 10


def test_a_runner_starts_once_and_takes_no_work_when_stopped() -> None:
    async def nothing() -> None:
        pass

    runner = AsyncRunner(limit=1, name=f"test-async-{next(_names)}")
    assert runner.free_slots == 0
    assert runner.try_acquire() == 0
    runner.start()
    with pytest.raises(RuntimeError, match="already started"):
        runner.start()
    assert runner.try_acquire() == 1
    runner.stop()
    with pytest.raises(RuntimeError, match="not running"):
        runner.submit(nothing)
    assert runner.try_acquire() == 0
    assert runner.free_slots == 0


def test_a_runner_that_never_started_stops_at_once() -> None:
    assert AsyncRunner().stop() is True


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(PgWorkerError, match="at least 1"):
        AsyncRunner(limit=0)
