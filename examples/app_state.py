"""Application state shared by tasks: an extension object read with ``ctx.get_ext``.

Run it with ``python examples/app_state.py``: five jobs each bump one shared counter.
The app also has a cron item, ``show_run_count`` every minute with an hour of backfill,
which ``pgworker run examples.app_state:app`` schedules.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from pgworker import App, Cron, JobContext


@dataclass
class AppState:
    """Whatever the application wants its tasks to share: here, a run counter."""

    run_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def increment_run_count(self) -> int:
        with self.lock:
            self.run_count += 1
            return self.run_count


app = App(concurrency=2, extensions=[AppState()])


@app.task("show_run_count")
def show_run_count(payload: dict[str, object], ctx: JobContext) -> None:
    """Bump the shared counter and print it."""
    count = ctx.get_ext(AppState).increment_run_count()
    print(f"Run count: {count}\n", end="", flush=True)


app.cron(Cron.every_minute(show_run_count).fill(timedelta(hours=1)))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        show_run_count.defer_many([{}] * 5)
        app.run_once()
    print(f"Final count: {app.extensions.get(AppState).run_count}")


if __name__ == "__main__":
    main()
