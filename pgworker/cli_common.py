"""Helpers shared by the ``pgworker`` commands: options, app loading, error reporting."""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from .app import App
from .errors import PgWorkerError
from .logs import configure_logging
from .settings import DEFAULT_SCHEMA, SCHEMA_VARIABLE

#: The environment variable any command reads its ``--database-url`` from (what
#: ``run --processes`` hands its children, so that no password shows in ``ps``).
DATABASE_URL_VARIABLE = "PGWORKER_DATABASE_URL"

_RELATIVE_TIME = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(click.ClickException):
    """A failure reported in one sentence, with exit code 1."""

    exit_code = 1


def load_app(target: str) -> App:
    """Import ``MODULE:ATTR`` and return the App it names.

    A missing module or attribute, or one that is not an App, is a usage error (exit 2,
    one sentence). An exception raised while importing the module is the user's own
    bug: its traceback from their module on (no import machinery), then exit 1.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.UsageError(f"expected MODULE:ATTR (like myproject.tasks:app), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _names_the_target(exc, module_name):
            raise _import_failure(target, exc) from exc
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise _import_failure(target, exc) from exc
    try:
        app = getattr(module, attr)
    except AttributeError as exc:
        raise click.UsageError(f"module {module_name!r} has no attribute {attr!r}") from exc
    if not isinstance(app, App):
        raise click.UsageError(
            f"{target} is a {type(app).__name__}, not a pgworker App; point at `app = App(...)`"
        )
    return app


def _names_the_target(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether the missing module is the target (or a package of it), not something
    the target's own code imports."""
    return exc.name is not None and (module_name + ".").startswith(exc.name + ".")


def _import_failure(target: str, exc: BaseException) -> CliError:
    """Print the traceback of an exception raised while importing ``target``'s module,
    from the user's frames on; the error that ends the command."""
    report = traceback.TracebackException.from_exception(exc)
    _drop_internal_frames(report)
    click.echo("".join(report.format()).rstrip(), err=True)
    module_name = target.partition(":")[0]
    return CliError(
        f"cannot load {target}: importing {module_name!r} raised "
        f"{type(exc).__name__} (traceback above)"
    )


def _drop_internal_frames(report: traceback.TracebackException) -> None:
    """Leave out the frames of ``load_app`` and of the import machinery, in ``report``
    and the exceptions chained to it: what is left starts in the user's module."""
    seen: set[int] = set()
    pending = [report]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not _is_import_machinery(frame.filename)]
        )
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep


def _is_import_machinery(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return True
    path = os.path.abspath(filename)
    return path == os.path.abspath(__file__) or path.startswith(_IMPORTLIB_DIR)


def parse_run_at(value: str | None) -> datetime | None:
    """An ISO 8601 time (UTC when it has no offset) or a delay like ``+10s``/``+5m``."""
    if value is None:
        return None
    relative = _RELATIVE_TIME.match(value)
    if relative:
        amount, unit = relative.groups()
        try:
            return datetime.now(UTC) + timedelta(seconds=float(amount) * _UNITS[unit])
        except OverflowError as exc:
            raise click.BadParameter(
                f"{value!r} ends after the year 9999", param_hint="--run-at"
            ) from exc
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is neither an ISO 8601 time nor a delay like +10s", param_hint="--run-at"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn pgworker's errors into one-sentence messages and exit code 1."""
    try:
        yield
    except PgWorkerError as exc:
        raise CliError(str(exc)) from exc


#: The shared ``-h``: every command and group takes it as well as ``--help``.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


@dataclass
class LogSettings:
    """The log level and format, from the options before and after the command name."""

    level: str = "info"
    format: str = "text"


def _set_log_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    settings = ctx.ensure_object(LogSettings)
    setattr(settings, "level" if param.name == "log_level" else "format", value)
    # The group has configured logging before a command's options are parsed: redo it.
    configure_logging(settings.level, settings.format)


def log_options(fn: Any) -> Any:
    """Add --log-level and --log-format, which configure logging as they are parsed, so
    that they work before the command name and after it."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        expose_value=False,
        callback=_set_log_option,
        help="text (default) or json: one object per line, with job_id, task_identifier...",
    )(fn)
    fn = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        expose_value=False,
        callback=_set_log_option,
        help="debug, info (default), warning or error.",
    )(fn)
    return fn


def database_options(fn: Any) -> Any:
    """Add --database-url and --schema to a command."""
    fn = click.option(
        "--schema",
        default=None,
        help=f"Worker schema (default: the app's, else {SCHEMA_VARIABLE}, else {DEFAULT_SCHEMA}).",
    )(fn)
    fn = click.option(
        "--database-url",
        default=None,
        envvar=DATABASE_URL_VARIABLE,
        help=f"PostgreSQL URL (or {DATABASE_URL_VARIABLE}). Default: DATABASE_URL, then PG* "
        "variables, then an embedded server.",
    )(fn)
    return fn


@contextmanager
def app_database(app: App, flag: str | None) -> Iterator[str | None]:
    """The explicit database for the app: ``--database-url``, else None, for the app
    to apply the database rule when it opens (``pgworker.embedded``). A usage error when
    the app brings its own pool (``App(pool=...)``)."""
    if app.is_open and flag:
        raise click.UsageError("--database-url can't apply: the app brings its own pool")
    yield flag


@contextmanager
def opened_app(
    database_url: str | None, schema: str | None, target: str | None = None
) -> Iterator[App]:
    """The app at ``target`` (or a bare App), configured from the shared options and open,
    on the database ``app_database`` picks; errors become one sentence."""
    app = load_app(target) if target else App()
    with reported_errors(), app_database(app, database_url) as url:
        app.configure(database_url=url, schema=schema)
        with app:
            yield app
