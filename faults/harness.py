"""Runs one fault against a fresh fleet and measures it from the ledger: jobs lost,
duplicate runs, throughput before, during and after, and when throughput came back."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from faults import ledger
from faults.cluster import Cluster
from faults.fleet import Fleet
from faults.injections import Fault, Stage

#: Seconds to wait for at least one job in flight before injecting a fault.
IN_FLIGHT_TIMEOUT = 15.0
#: Seconds the queue gets to drain after the load stops.
DRAIN_TIMEOUT = 180.0
#: The shortest "during" window, for a fault that is over at once (a SIGKILL).
MIN_DURING = 5.0
#: Throughput has returned once a one-second window reaches this share of "before".
RETURNED_SHARE = 0.8
#: Seconds the "after" window may be extended while a backlog drains under the load.
MAX_EXTRA_AFTER = 90.0
#: A job that finished this little before a fault may still have its completion
#: unwritten (batched): a second run of it is the at-least-once contract, not a bug.
COMPLETION_GRACE = 2.0
#: Seconds at the start of the "before" window left out (the worker warming up).
WARM_UP = 2.0


@dataclass(frozen=True)
class Settings:
    """The knobs of a run (see ``python -m faults --help``)."""

    rate: float
    job_seconds: float
    concurrency: int
    before: float
    after: float
    scale: float
    min_jobs: int


@dataclass
class Result:
    """One fault's measurements."""

    fault: str
    jobs: int = 0
    in_flight_at_start: int = 0
    queued_at_start: int = 0
    lost: int = 0
    stuck: int = 0
    duplicate_runs: int = 0
    seconds_to_recover: float | None = None
    seconds_to_catch_up: float | None = None
    before_per_s: float = 0.0
    during_per_s: float = 0.0
    after_per_s: float = 0.0
    p95_wait_ms: dict[str, float | None] = field(default_factory=dict)
    fault_seconds: float = 0.0
    defer_failures: int = 0
    worker_survived: bool = True
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The result as plain JSON values."""
        return asdict(self)


def progress(message: str) -> None:
    """One line of progress on stderr."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)


def _unexplained(
    duplicated: dict[int, int], events: list[ledger.Event], fault_start: float, lifted: float
) -> list[int]:
    """Jobs finished more than once that were not running during the fault (started
    after it ended, or finished well before it began): a duplicate the fault can't
    explain."""
    first: dict[tuple[int, str], float] = {}
    for event in events:
        if event.job_id in duplicated:
            first.setdefault((event.job_id, event.event), event.at)
    return sorted(
        job_id
        for job_id in duplicated
        if first[(job_id, "start")] > lifted
        or first[(job_id, "finish")] < fault_start - COMPLETION_GRACE
    )


def _caught_up(
    added: dict[int, float], first_start: dict[int, float], lifted: float, threshold: float
) -> float | None:
    """Seconds from the fault's end until the start of the first job from which on
    every job added waited less than ``threshold`` seconds (the backlog is gone)."""
    waits = sorted((t, first_start.get(i)) for i, t in added.items() if t >= lifted)
    caught: float | None = None
    for added_at, started in waits:
        if started is None or started - added_at >= threshold:
            caught = None
        elif caught is None:
            caught = started
    return None if caught is None else round(max(0.0, caught - lifted), 1)


def run_fault(cluster: Cluster, fault: Fault, settings: Settings, logs: Path) -> Result:
    """Run ``fault`` against a fleet of its own and measure it."""
    result = Result(fault.name)
    fleet = Fleet(
        cluster,
        logs,
        name=fault.name,
        rate=settings.rate,
        job_seconds=settings.job_seconds,
        concurrency=settings.concurrency,
        proxied=fault.proxied,
    )
    try:
        fleet.start_worker()
        fleet.load.start()
        began = time.time()
        time.sleep(settings.before)  # the "before" measurement window
        deadline = time.monotonic() + IN_FLIGHT_TIMEOUT
        while not ledger.running_at(ledger.events(fleet.check(), began), time.time()):
            if time.monotonic() > deadline:
                result.problems.append("no job in flight when the fault started")
                break
            time.sleep(0.01)
        fault_start = time.time()
        result.in_flight_at_start = len(
            ledger.running_at(ledger.events(fleet.check(), began), fault_start)
        )
        result.queued_at_start = len(ledger.queued(fleet.check(), fleet.schema, fleet.load.added))
        stage = Stage(fleet, settings.scale, result.notes)
        progress(f"{fault.name}: injecting ({result.in_flight_at_start} jobs in flight)")
        fault.inject(stage)
        progress(f"{fault.name}: lifted")
        lifted = time.time()
        result.fault_seconds = round(lifted - fault_start, 1)
        during_end = max(lifted, fault_start + MIN_DURING)
        time.sleep(max(0.0, during_end - time.time()) + settings.after)  # "after" window
        # A backlog (an outage, an overload) drains under the steady load: wait for it.
        normal = max(20, 2 * result.queued_at_start)
        deadline = time.monotonic() + MAX_EXTRA_AFTER
        while time.monotonic() < deadline:
            if len(ledger.queued(fleet.check(), fleet.schema, fleet.load.snapshot())) <= normal:
                break
            time.sleep(1.0)
        after_end = time.time()
        fleet.load.stop()
        result.defer_failures = fleet.load.failed
        result.worker_survived = fleet.workers_alive()
        if not result.worker_survived:
            result.problems.append("the worker process died")
            fleet.start_worker()  # to drain what is left, and say so
        added = fleet.load.snapshot()
        progress(f"{fault.name}: load stopped after {len(added)} jobs; draining")
        deadline = time.monotonic() + DRAIN_TIMEOUT
        settle = time.monotonic() + 10.0
        while remaining := ledger.queued(fleet.check(), fleet.schema, added):
            if time.monotonic() > deadline:
                break
            if time.monotonic() > settle and remaining <= ledger.finished(fleet.check()):
                # Finished, yet still in the queue: a completion that was never written
                # (the job stays locked by its worker). Said below, not waited for.
                result.notes.append(
                    f"{len(remaining)} finished job(s) left locked in the queue: "
                    f"{ledger.lockers(fleet.check(), fleet.schema, remaining)}"
                )
                break
            time.sleep(0.2)
        progress(f"{fault.name}: drained")
        events = ledger.events(fleet.check())
        tally = ledger.tally(added, events, ledger.queued(fleet.check(), fleet.schema, added))
        result.jobs = tally.added
        result.lost = len(tally.lost)
        result.stuck = len(tally.still_queued)
        result.duplicate_runs = tally.duplicate_runs
        if tally.lost:
            result.notes.append(f"lost job ids: {tally.lost[:20]}")
        if tally.duplicated:
            result.notes.append(f"run twice: {sorted(tally.duplicated)[:20]}")
            unexplained = _unexplained(tally.duplicated, events, fault_start, lifted)
            if unexplained:
                result.problems.append(
                    f"run twice though not running during the fault: {unexplained[:20]}"
                )

        finishes = [e.at for e in events if e.event == "finish"]
        result.before_per_s = round(ledger.rate(finishes, began + WARM_UP, fault_start), 1)
        result.during_per_s = round(ledger.rate(finishes, fault_start, during_end), 1)
        result.after_per_s = round(ledger.rate(finishes, during_end, after_end), 1)
        returned = ledger.first_second_at(
            finishes, lifted, after_end, RETURNED_SHARE * result.before_per_s
        )
        result.seconds_to_recover = None if returned is None else round(returned, 1)

        first_start: dict[int, float] = {}
        for event in events:
            if event.event == "start":
                first_start.setdefault(event.job_id, event.at)
        windows = {
            "before": (began + WARM_UP, fault_start),
            "during": (fault_start, during_end),
            "after": (during_end, after_end),
        }
        result.p95_wait_ms = {
            phase: _p95(
                [
                    first_start[i] - t
                    for i, t in added.items()
                    if low <= t < high and i in first_start
                ]
            )
            for phase, (low, high) in windows.items()
        }
        result.seconds_to_catch_up = _caught_up(
            added, first_start, lifted, max(0.5, 3 * (result.p95_wait_ms["before"] or 0) / 1000)
        )
        if result.jobs < settings.min_jobs:
            result.problems.append(f"only {result.jobs} jobs (fewer than {settings.min_jobs})")
        if result.in_flight_at_start == 0:
            result.problems.append("no job in flight at the fault's start")
        if result.lost:
            result.problems.append(f"{result.lost} jobs lost")
        if result.stuck:
            result.problems.append(f"{result.stuck} jobs still queued after the drain")
        if result.seconds_to_recover is None:
            result.problems.append("throughput did not return")
    except Exception as exc:  # one broken fault must not hide the others' results
        result.problems.append(f"harness error: {type(exc).__name__}: {exc}")
    finally:
        fleet.close()
    return result
