"""The smallest complete worker: one typed task that fails 70% of the time, so retries show.

Run it with ``python examples/simple.py`` (or ``make demo``). Without DATABASE_URL it
starts an embedded PostgreSQL under ``.pgworker/``. Stop it with Ctrl+C.
The app also runs under the CLI: ``pgworker run examples.simple:app``.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta

import msgspec

from pgworker import App, JobContext

app = App(concurrency=2, poll_interval=1.0)


class SayHello(msgspec.Struct):
    message: str


@app.task("say_hello")
def say_hello(payload: SayHello, ctx: JobContext) -> None:
    """Greet, then fail most of the time: the worker retries with growing delays."""
    greeting = f"Hello {payload.message}! (job {ctx.job.id}, attempt {ctx.job.attempts})\n"
    print(greeting, end="", flush=True)  # one write, so threads don't interleave lines
    if random.random() < 0.7:
        raise RuntimeError("Failed")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        say_hello.defer(
            SayHello(message="from the future"), run_at=datetime.now(UTC) + timedelta(seconds=10)
        )
        for name in ("world", "pgworker", "PostgreSQL"):
            say_hello.defer({"message": name})
        app.run()


if __name__ == "__main__":
    main()
