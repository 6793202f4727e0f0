"""Application state shared by tasks: an extension object read with ``ctx.get_ext``.

Run it with ``python examples/app_state.py``: five jobs each bump one shared counter.
(The Rust tour adds a cron entry here too; cron comes with pgworker's cron issue.)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pgworker import App, JobContext
from pgworker.embedded import development_database


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
def show_run_count(payload: dict[str, str], ctx: JobContext) -> None:
    """Bump the shared counter and print it."""
    count = ctx.get_ext(AppState).increment_run_count()
    print(f"Run count: {count}\n", end="", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with development_database() as url, app.open(url):
        app.migrate()
        show_run_count.defer_many([{}] * 5)
        app.run_once()
    print(f"Final count: {app.extensions.get(AppState).run_count}")


if __name__ == "__main__":
    main()
