"""Worker subprocesses: ``pgworker run faults.app:app``, and Node graphile-worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_TARGET = "faults.app:app"
#: Where graphile-worker 0.17 is installed (``npm ci`` there); FAULTS_NODE_DIR overrides.
NODE_DIR = Path(os.environ.get("FAULTS_NODE_DIR") or ROOT / "tests" / "interop" / "node")


def _pgworker_script() -> str:
    script = Path(sys.executable).with_name("pgworker")
    return str(script) if script.exists() else "pgworker"


def start_pgworker(
    database_url: str,
    schema: str,
    log: Path,
    *,
    concurrency: int = 4,
    poll_interval: float = 1.0,
    ledger_url: str | None = None,
) -> subprocess.Popen[bytes]:
    """``pgworker run faults.app:app`` in its own session, output into ``log``;
    ``ledger_url`` (default ``database_url``) is where its jobs write the ledger."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "FAULTS_LEDGER_URL": ledger_url or database_url,
        "FAULTS_CONCURRENCY": str(concurrency),
        "PGWORKER_NO_EMBEDDED": "1",
    }
    command = [
        _pgworker_script(),
        "run",
        APP_TARGET,
        "--database-url",
        database_url,
        "--schema",
        schema,
        "--poll-interval",
        str(poll_interval),
        "--concurrency",
        str(concurrency),
    ]
    return _spawn(command, env, log)


def start_node_worker(
    database_url: str, schema: str, log: Path, *, seconds: float, concurrency: int = 4
) -> subprocess.Popen[bytes]:
    """graphile-worker 0.17 (tests/interop/node's install) running faults/node_worker.js:
    the same ``ledger_job`` task, writing the same ledger, for ``seconds`` seconds."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "graphile-worker").is_dir():
        raise RuntimeError(f"node and graphile-worker (npm ci in {NODE_DIR}) are needed")
    env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
    command = [
        node,
        str(Path(__file__).with_name("node_worker.js")),
        database_url,
        schema,
        str(seconds),
        str(concurrency),
    ]
    return _spawn(command, env, log)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
