"""The task of the hooks example: it only prints; the plugins make the difference."""

from __future__ import annotations

import msgspec

from pgworker import App


class ProcessData(msgspec.Struct):
    """A value to process; ``skip`` and ``force_fail`` are read by the validation plugin."""

    value: int
    skip: bool = False
    force_fail: bool = False


def register(app: App) -> None:
    """Add the ``process_data`` task to ``app``."""

    @app.task("process_data", max_attempts=1)
    def process_data(payload: ProcessData) -> None:
        print(f"Processing value {payload.value}\n", end="", flush=True)
