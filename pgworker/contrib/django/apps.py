"""The Django app of pgworker.contrib.django: it brings the ``pgworker`` command."""

from __future__ import annotations

from django.apps import AppConfig


class PgWorkerConfig(AppConfig):
    """``INSTALLED_APPS = [..., "pgworker.contrib.django"]``: no models, one command."""

    name = "pgworker.contrib.django"
    label = "pgworker_django"
    verbose_name = "pgworker"
