"""The fleet under test: a private cluster, a worker schema, pgworker (and Node) worker
processes, a steady job load, and optionally a proxy between the worker and the server."""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from faults import ledger
from faults.cluster import Cluster
from faults.load import Load
from faults.proxy import Proxy
from faults.workers import start_node_worker, start_pgworker
from pgworker import App

#: The application_name of every connection of the pgworker process under test (its
#: ledger writes excepted), so that a fault can pick them out.
WORKER_APPLICATION = "faults-worker"
#: Seconds a worker gets to say it started.
START_TIMEOUT = 30.0


class Fleet:
    """Everything one fault runs against; ``close()`` stops it all (not the cluster)."""

    def __init__(
        self,
        cluster: Cluster,
        logs: Path,
        *,
        name: str,
        rate: float,
        job_seconds: float,
        concurrency: int,
        proxied: bool = False,
    ) -> None:
        self.cluster = cluster
        self.logs = logs
        self.name = name
        self.concurrency = concurrency
        self.schema = f"faults_{name}_{secrets.token_hex(3)}"
        self.proxy = Proxy(cluster.port) if proxied else None
        port = self.proxy.port if self.proxy else cluster.port
        self.worker_url = (
            f"postgresql://postgres@127.0.0.1:{port}/postgres"
            f"?sslmode=disable&application_name={WORKER_APPLICATION}"
        )
        self.conn = psycopg.connect(cluster.url, autocommit=True)
        ledger.create(self.conn)
        self.client = App(
            database_url=cluster.url + "&application_name=faults-load",
            schema=self.schema,
            embedded=False,
            pool_timeout=2.0,
        )
        self.client.open()
        self.client.migrate()
        self.load = Load(self.client, rate=rate, seconds=job_seconds)
        self.capacity = concurrency / job_seconds
        self.workers: list[subprocess.Popen[bytes]] = []
        self.node: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def check(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The harness's own connection, reopened if a fault broke it."""
        try:
            self.conn.execute("select 1")
        except psycopg.OperationalError:
            self.conn.close()
            self.conn = psycopg.connect(self.cluster.url, autocommit=True)
        return self.conn

    @property
    def worker_log(self) -> Path:
        return self.logs / f"{self.name}-pgworker.log"

    def start_worker(self) -> None:
        """Start a pgworker process and wait until it says it started."""
        log = self.worker_log
        offset = log.stat().st_size if log.exists() else 0
        proc = start_pgworker(
            self.worker_url,
            self.schema,
            log,
            concurrency=self.concurrency,
            ledger_url=self.cluster.url,
        )
        self.workers.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not re.search(r"Worker \S+ started", log.read_text(errors="replace")[offset:]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.05)

    def kill_worker(self) -> None:
        """SIGKILL the newest live pgworker process."""
        live = [proc for proc in self.workers if proc.poll() is None]
        if not live:
            raise RuntimeError(f"no live worker to kill; see {self.worker_log}")
        live[-1].kill()
        live[-1].wait(10)
        self.restarts += 1

    def workers_alive(self) -> bool:
        """Whether the newest pgworker process still runs."""
        return bool(self.workers) and self.workers[-1].poll() is None

    def start_node_worker(self, seconds: float) -> subprocess.Popen[bytes]:
        """A Node graphile-worker process on the same schema for ``seconds``."""
        self.node = start_node_worker(
            self.cluster.url,
            self.schema,
            self.logs / f"{self.name}-node.log",
            seconds=seconds,
            concurrency=self.concurrency,
        )
        return self.node

    def node_finishes(self) -> int:
        """Jobs the Node worker finished (its ledger rows name it ``node-...``)."""
        row = (
            self.check()
            .execute(
                sql.SQL(
                    "select count(*) from {} where event = 'finish' and worker like 'node-%%'"
                ).format(sql.Identifier(ledger.TABLE)),
            )
            .fetchone()
        )
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Stop the load and every process (SIGTERM, then SIGKILL), close the proxy."""
        with contextlib.suppress(Exception):
            self.load.stop()
        procs = [*self.workers, *([self.node] if self.node else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.proxy:
            self.proxy.close()
        self.client.close()
        self.conn.close()
