"""pgworker for Django: a django.tasks backend (Django 6, or the django-tasks backport).

Put ``"pgworker.contrib.django"`` in INSTALLED_APPS (for ``manage.py pgworker``) and
``"BACKEND": "pgworker.contrib.django.PgWorkerBackend"`` in TASKS; docs/django.md has
the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import PgWorkerBackend

__all__ = ["PgWorkerBackend"]


def __getattr__(name: str) -> Any:
    # Lazy: Django imports this package (the AppConfig) before settings are ready.
    if name == "PgWorkerBackend":
        from .backend import PgWorkerBackend

        return PgWorkerBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
