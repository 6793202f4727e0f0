"""A small logging setup for the example: pgworker at INFO, the rest at WARNING."""

from __future__ import annotations

import logging


def enable_logs() -> None:
    """Log pgworker's job lines to stderr, quietly for everything else."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(message)s")
    logging.getLogger("pgworker").setLevel(logging.INFO)
