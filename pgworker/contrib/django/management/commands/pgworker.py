"""``manage.py pgworker``: run a worker for the Django tasks of a backend's queues."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgworker.contrib.django.worker import build_worker_app, prepare
from pgworker.errors import PgWorkerError
from pgworker.logs import configure_logging


class Command(BaseCommand):
    """Run Django tasks: ``manage.py pgworker [--queue NAME]... [--once]``."""

    help = (
        "Run a pgworker worker for Django tasks (a backend's queues, or those named with "
        "--queue), until SIGINT/SIGTERM; with --once, until no job is runnable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The command's options."""
        parser.add_argument("--backend", default="default", help="the TASKS alias")
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            help="a Django queue to serve (repeat for several; default: all of QUEUES)",
        )
        parser.add_argument("--concurrency", type=int, default=None, help="threads for jobs")
        parser.add_argument("--once", action="store_true", help="run the runnable jobs, then exit")
        parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
        parser.add_argument(
            "--migrate-only",
            action="store_true",
            help="install the worker schema and the results table, then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Build the App, install its tables, run it."""
        if not logging.getLogger().handlers:
            configure_logging(options["log_level"], "text")
        app_options: dict[str, Any] = {}
        if options["concurrency"] is not None:
            app_options["concurrency"] = options["concurrency"]
        try:
            app = build_worker_app(options["backend"], options["queues"], **app_options)
            with app:
                prepare(app, options["backend"])
                if options["migrate_only"]:
                    return
                if options["once"]:
                    app.run_once()
                else:
                    app.run()
        except (PgWorkerError, ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from exc
