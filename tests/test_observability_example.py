"""examples/observability.py runs end to end: its spans join from request to run, and its
metrics text counts the two jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def test_observability_example(example_database: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), DATABASE_URL=example_database)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "observability.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    spans: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line.startswith("{"):
            span = json.loads(line)
            spans[span["name"]] = span
    request = spans["POST /upload"]
    trace_id = request["context"]["trace_id"]
    for task in ("resize_image", "charge_card"):
        send, run = spans[f"send {task}"], spans[f"process {task}"]
        assert send["parent_id"] == request["context"]["span_id"]
        assert run["parent_id"] == send["context"]["span_id"]
        assert send["context"]["trace_id"] == run["context"]["trace_id"] == trace_id
    assert spans["resize"]["parent_id"] == spans["process resize_image"]["context"]["span_id"]
    assert spans["process resize_image"]["status"]["status_code"] == "UNSET"
    assert spans["process charge_card"]["status"] == {
        "status_code": "ERROR",
        "description": "RuntimeError: card declined",
    }

    text = "\n".join(line for line in lines if not line.startswith("{")) + "\n"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("pgworker_jobs_completed_total", (("task", "resize_image"),))] == 1
    assert samples[("pgworker_jobs_permanently_failed_total", (("task", "charge_card"),))] == 1
    failed_job = (("queue", ""), ("state", "permanently_failed"), ("task", "charge_card"))
    assert samples[("pgworker_jobs", failed_job)] == 1
