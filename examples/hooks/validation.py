"""A plugin that decides, before a job runs, whether to run it, skip it or fail it."""

from __future__ import annotations

from typing import Any

from pgworker import Fail, Job, Plugin, Skip
from pgworker.hooks import BeforeRun


class ValidationPlugin(Plugin):
    """Skips jobs whose payload says ``skip``, fails those that say ``force_fail``."""

    def before_job_run(self, job: Job, payload: Any) -> BeforeRun:
        if payload.get("skip"):
            print(f"Validation: skipping job {job.id}\n", end="", flush=True)
            return Skip()
        if payload.get("force_fail"):
            print(f"Validation: failing job {job.id}\n", end="", flush=True)
            return Fail("rejected by ValidationPlugin")
        return None
