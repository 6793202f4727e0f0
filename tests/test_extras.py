"""pgworker imports, and its extras' modules import, without the extras' packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("package", "module"), [("opentelemetry", "otel"), ("prometheus_client", "prometheus")]
)
def test_importing_pgworker_does_not_need_the_extra(package: str, module: str) -> None:
    script = (
        f"import sys; sys.modules[{package!r}] = None\n"
        f"import pgworker, pgworker.{module}\n"
        f"print(sorted(m for m in sys.modules if m.startswith({package + '.'!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
