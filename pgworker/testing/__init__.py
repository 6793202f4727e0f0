"""Helpers for testing the tasks of a pgworker App (the pytest plugin is ``.plugin``).

- ``run_jobs(app)``: run every due job in the calling thread, and the jobs they defer.
- ``deferred_jobs``, ``assert_deferred``, ``assert_not_deferred``: what was deferred.
- ``app.eager()`` (``eager_mode(app)``): ``defer`` runs the task inline, no database.

None of this needs pytest; the fixtures in ``pgworker.testing.plugin`` do.
"""

from .assertions import assert_deferred, assert_not_deferred, deferred_jobs
from .eager import EagerMode, eager_mode
from .records import DeferredJob, JobRun
from .run import JobsFailed, RunawayJobsError, RunResult, run_jobs

__all__ = [
    "DeferredJob",
    "EagerMode",
    "JobRun",
    "JobsFailed",
    "RunResult",
    "RunawayJobsError",
    "assert_deferred",
    "assert_not_deferred",
    "deferred_jobs",
    "eager_mode",
    "run_jobs",
]
