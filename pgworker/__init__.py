"""pgworker: a PostgreSQL job queue for Python that speaks graphile-worker's protocol."""

from .admin import Admin, CleanupResult, JobState, ListedJob, StatRow
from .app import App
from .context import Extensions, JobContext
from .control import WorkerHandle
from .controls import BatchResult, JobControl, PermanentFailure, Retry, Snooze
from .cron import Cron, CronItem, CrontabError, Weekday
from .errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    IncompatibleSchemaError,
    JobCancelledError,
    JobNotCreatedError,
    JobTimeoutError,
    MigrationError,
    PayloadError,
    PgWorkerError,
    UnknownExtensionError,
    WorkerIdInUseError,
)
from .hooks import (
    Complete,
    DeferRejected,
    DeferSkipped,
    Fail,
    JobResult,
    Plugin,
    Reject,
    RewritePayload,
    Skip,
)
from .job import Job
from .migrate import MigrationOutcome
from .recovery import Recovery
from .settings import LocalQueue, RefetchDelay
from .spec import JobKeyMode, JobSpec, RawJob
from .task import Task

__all__ = [
    "Admin",
    "App",
    "BatchResult",
    "CleanupResult",
    "Complete",
    "ConfigurationError",
    "Cron",
    "CronItem",
    "CrontabError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DeferRejected",
    "DeferSkipped",
    "Extensions",
    "Fail",
    "IncompatibleSchemaError",
    "Job",
    "JobCancelledError",
    "JobContext",
    "JobControl",
    "JobKeyMode",
    "JobNotCreatedError",
    "JobResult",
    "JobSpec",
    "JobState",
    "JobTimeoutError",
    "ListedJob",
    "LocalQueue",
    "MigrationError",
    "MigrationOutcome",
    "PayloadError",
    "PermanentFailure",
    "PgWorkerError",
    "Plugin",
    "RawJob",
    "Recovery",
    "RefetchDelay",
    "Reject",
    "Retry",
    "RewritePayload",
    "Skip",
    "Snooze",
    "StatRow",
    "Task",
    "UnknownExtensionError",
    "Weekday",
    "WorkerHandle",
    "WorkerIdInUseError",
]
