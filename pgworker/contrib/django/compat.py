"""The one import shim: Django 6's ``django.tasks``, else the ``django-tasks`` backport."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Type-checked against the backport (typed, and installed for Python 3.11); Django 6's
    # module has the same names and shapes.
    from django_tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, task_backends
    from django_tasks import TaskResultStatus as Status
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    #: Which API is in use: "django.tasks" (Django >= 6) or "django_tasks" (the backport).
    API = "django_tasks"
else:
    try:
        from django.tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, task_backends
        from django.tasks import TaskResultStatus as Status
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json

        API = "django.tasks"
    except ImportError:
        try:
            from django_tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, task_backends
            from django_tasks import TaskResultStatus as Status
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import Task, TaskError
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
            from django_tasks.exceptions import TaskResultDoesNotExist
            from django_tasks.signals import task_enqueued, task_finished, task_started
            from django_tasks.utils import normalize_json
        except ImportError as exc:
            raise ImportError(
                "pgworker.contrib.django needs Django >= 6 (django.tasks) or the django-tasks "
                "backport (Django 4.2 to 6.0): pip install 'pgworker-queue[django]'"
            ) from exc
        API = "django_tasks"

#: The statuses, as values (Django's TextChoices members, typed as such).
READY = Status("READY")
RUNNING = Status("RUNNING")
FAILED = Status("FAILED")
SUCCESSFUL = Status("SUCCESSFUL")

__all__ = [
    "API",
    "DEFAULT_TASK_QUEUE_NAME",
    "FAILED",
    "READY",
    "RUNNING",
    "SUCCESSFUL",
    "BaseTaskBackend",
    "InvalidTask",
    "Status",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "normalize_json",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
