"""Four jobs through two plugins: processed, skipped, failed by validation, processed.

Run it with ``python -m examples.hooks``.
"""

from __future__ import annotations

from pgworker import App

from .logging_setup import enable_logs
from .metrics import MetricsPlugin
from .process_data import ProcessData, register
from .validation import ValidationPlugin

app = App(concurrency=1, plugins=[MetricsPlugin(), ValidationPlugin()])
register(app)


def main() -> None:
    enable_logs()
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        for payload in (
            ProcessData(value=1),
            ProcessData(value=2, skip=True),
            ProcessData(value=3, force_fail=True),
            ProcessData(value=4),
        ):
            app.defer("process_data", payload)
        app.run_once()


if __name__ == "__main__":
    main()
