"""``pgworker run --processes N``: the command line of each child, and the supervisor."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click

from .cli_common import DATABASE_URL_VARIABLE, LogSettings, load_app, reported_errors
from .embedded import configured_database_url, embedded_allowed, start_embedded
from .supervisor import Supervisor

#: Options of ``run`` that the supervisor handles itself instead of passing them on.
SUPERVISOR_OPTIONS = frozenset({"processes", "database_url", "worker_id"})


def supervise(
    target: str, processes: int, database_url: str | None, params: Mapping[str, Any]
) -> None:
    """Run ``processes`` children ``pgworker run TARGET`` with the other options of this
    command, until a stop signal; exit with the supervisor's code."""
    app = load_app(target)  # fail here, once, rather than in a restart loop
    ctx = click.get_current_context()
    options = _passed_on(ctx.command, params)
    logs = ctx.ensure_object(LogSettings)
    worker_id = params.get("worker_id")
    with reported_errors(), _children_database(app.database_url, database_url) as url:

        def command(start: int) -> list[str]:
            argv = [sys.executable, "-m", "pgworker.cli", "run", target, *options]
            argv += ["--log-level", logs.level, "--log-format", logs.format]
            if worker_id is not None:  # one id per process: a worker id locks jobs
                argv += ["--worker-id", f"{worker_id}-{start}"]
            return argv

        # The URL may hold a password: it goes in the children's environment, not on
        # their command lines, which every user of the machine can read.
        env = {DATABASE_URL_VARIABLE: url} if url is not None else None
        code = Supervisor(command, processes, env=env).run()
    ctx.exit(code)


def _passed_on(command: click.Command, params: Mapping[str, Any]) -> list[str]:
    """The options given to this ``run`` as command-line arguments again, but those the
    supervisor handles."""
    argv: list[str] = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in SUPERVISOR_OPTIONS:
            continue
        value = params.get(param.name or "")
        flag = max(param.opts, key=len)
        if param.is_flag:
            if value:
                argv.append(flag)
        elif param.multiple:
            for item in value or ():
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


@contextmanager
def _children_database(app_url: str | None, flag: str | None) -> Iterator[str | None]:
    """The ``--database-url`` to give the children: ``flag``; else, when the database
    rule would fall back to the embedded server, that server, started here once for all
    of them (and stopped after them); else None, for each child to apply the rule."""
    if flag or configured_database_url(app_url) is not None or not embedded_allowed():
        yield flag
        return
    server = start_embedded()
    try:
        yield server.url
    finally:
        server.release()
