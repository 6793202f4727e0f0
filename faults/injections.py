"""The faults: each one a function that injects its fault into a running fleet and
returns once the fault is lifted (a SIGKILL at once; a stopped server when it is back)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from faults.fleet import WORKER_APPLICATION, Fleet
from faults.proxy import Proxy


@dataclass
class Stage:
    """What a fault may act on: the fleet (its cluster, workers and load) and the
    scale applied to every duration."""

    fleet: Fleet
    scale: float
    notes: list[str]

    def seconds(self, nominal: float) -> float:
        """A fault's nominal duration, scaled (never under a second)."""
        return max(1.0, nominal * self.scale)

    def note(self, text: str) -> None:
        """Something to print under the fault's row."""
        self.notes.append(text)


def worker_sigkill(stage: Stage) -> None:
    """SIGKILL the worker and start a new one at once."""
    stage.fleet.kill_worker()
    stage.fleet.start_worker()


def repeated_sigkill(stage: Stage) -> None:
    """SIGKILL the worker and start a new one, every 20 s for 2 minutes."""
    end = time.monotonic() + stage.seconds(120)
    kills = 0
    while True:
        stage.fleet.kill_worker()
        stage.fleet.start_worker()
        kills += 1
        if time.monotonic() + 20 > end:
            break
        time.sleep(20)  # the fault's own rhythm
    stage.note(f"{kills} SIGKILLs")


def _pg_stop(stage: Stage, mode: str) -> None:
    stage.fleet.cluster.stop(mode)
    time.sleep(stage.seconds(30))  # the outage itself
    stage.fleet.cluster.start()


def pg_stop_fast(stage: Stage) -> None:
    """PostgreSQL stopped (-m fast) for 30 s, then started."""
    _pg_stop(stage, "fast")


def pg_stop_immediate(stage: Stage) -> None:
    """PostgreSQL stopped (-m immediate: a crash) for 30 s, then started."""
    _pg_stop(stage, "immediate")


def terminate_storm(stage: Stage) -> None:
    """pg_terminate_backend on every connection of the worker, twice a second for 30 s."""
    end = time.monotonic() + stage.seconds(30)
    terminated = 0
    with psycopg.connect(stage.fleet.cluster.url, autocommit=True) as conn:
        while time.monotonic() < end:
            row = conn.execute(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where application_name = %s and pid <> pg_backend_pid()",
                (WORKER_APPLICATION,),
            ).fetchone()
            terminated += row[0] if row else 0
            time.sleep(0.5)
    stage.note(f"{terminated} worker connections terminated")


def xmin_holder(stage: Stage) -> None:
    """A transaction with an xid and a snapshot, open for a minute: holds back xmin, so
    vacuum can remove no dead job row meanwhile."""
    with psycopg.connect(stage.fleet.cluster.url) as conn:
        conn.execute("set transaction isolation level repeatable read")
        conn.execute("select txid_current()")
        time.sleep(stage.seconds(60))
        conn.rollback()


def idle_connections(stage: Stage, count: int = 300) -> None:
    """300 idle connections held for a minute (max_connections nearly exhausted)."""
    held: list[psycopg.Connection[tuple[object, ...]]] = []
    refused = ""
    try:
        for _ in range(count):
            try:
                held.append(
                    psycopg.connect(
                        stage.fleet.cluster.url, application_name="faults-idle", connect_timeout=5
                    )
                )
            except psycopg.OperationalError as exc:
                refused = str(exc).strip().splitlines()[-1]
                break
        with psycopg.connect(stage.fleet.cluster.url, autocommit=True) as conn:
            row = conn.execute(
                "select current_setting('max_connections')::int - count(*) "
                "from pg_stat_activity where backend_type = 'client backend'"
            ).fetchone()
        stage.note(
            f"{len(held)} idle connections held, {row[0] if row else '?'} slots left"
            + (f" (then refused: {refused})" if refused else "")
        )
        time.sleep(stage.seconds(60))
    finally:
        for conn in held:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def overload(stage: Stage) -> None:
    """1.5x the worker's capacity (concurrency / job seconds) for 30 s, then back."""
    load = stage.fleet.load
    base = load.rate
    load.rate = 1.5 * stage.fleet.capacity
    stage.note(f"load {load.rate:.0f}/s for the fault, {base:.0f}/s otherwise")
    time.sleep(stage.seconds(30))
    load.rate = base


def mixed_fleet_node(stage: Stage) -> None:
    """A Node graphile-worker 0.17 process beside pgworker for 30 s, running the same
    task into the same ledger, then stopping on its own."""
    seconds = stage.seconds(30)
    node = stage.fleet.start_node_worker(seconds)
    code = node.wait(seconds + 60)
    stage.note(f"node worker ran {stage.fleet.node_finishes()} jobs, exited {code}")


def silent_listen(stage: Stage) -> None:
    """The worker's LISTEN connection goes silent for 30 s: a loopback proxy between the
    worker and the server stops forwarding on that one connection (no FIN, no RST)."""
    proxy = stage.fleet.proxy
    assert proxy is not None
    frozen_at = time.time()
    frozen = proxy.freeze_listeners()
    time.sleep(stage.seconds(30))
    noticed = [t - frozen_at for t in proxy.listens_at if t > frozen_at]
    stage.note(
        f"{frozen} LISTEN connection(s) frozen; "
        + (
            f"the worker listened again on a new connection after {noticed[0]:.1f} s"
            if noticed
            else "the worker did not notice (it polled meanwhile); the proxy then reset it"
        )
    )
    proxy.thaw()


@dataclass(frozen=True)
class Fault:
    """A named fault and whether its worker connects through the proxy."""

    name: str
    inject: Callable[[Stage], None]
    proxied: bool = False


FAULTS = (
    Fault("worker_sigkill", worker_sigkill),
    Fault("pg_stop_fast", pg_stop_fast),
    Fault("pg_stop_immediate", pg_stop_immediate),
    Fault("terminate_storm", terminate_storm),
    Fault("repeated_sigkill", repeated_sigkill),
    Fault("xmin_holder", xmin_holder),
    Fault("idle_connections", idle_connections),
    Fault("overload", overload),
    Fault("mixed_fleet_node", mixed_fleet_node),
    Fault("silent_listen", silent_listen, proxied=True),
)

__all__ = ["FAULTS", "Fault", "Proxy", "Stage"]
