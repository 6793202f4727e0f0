"""Every Python block of the README runs as written: in an empty directory, with no
database configured (no DATABASE_URL, no PG* variables), so the database rule falls back
on the embedded server (the rule never tries libpq's default socket)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def embedded_dir() -> Iterator[Path]:
    """One embedded server's data directory for all the blocks (each starts and stops
    it again: only the first initialises it)."""
    with tempfile.TemporaryDirectory(prefix="pgw-readme-") as directory:
        yield Path(directory)


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index: int, tmp_path: Path, embedded_dir: Path) -> None:
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(BLOCKS[index])
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    env["PGWORKER_EMBEDDED_DIR"] = str(embedded_dir)
    proc = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"block {index}:\n{BLOCKS[index]}\n{proc.stdout}{proc.stderr}"
    assert list(tmp_path.iterdir()) == [script]  # nothing written in the working directory
