"""Recurring jobs: ``say_hello`` every 2 minutes with a typed payload, backfilled for 10
minutes after downtime, deduplicated by a job key; plus a crontab line for a second task.

Run it with ``python examples/crontab.py`` and leave it running a few minutes (Ctrl+C
stops it); ``pgworker cron list examples.crontab:app`` shows the table and next runs.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import msgspec

from pgworker import App, Cron

app = App(
    concurrency=2,
    # graphile-worker's crontab format: minute hour day month weekday task ?options payload
    crontab="0 4 * * 1-5 nightly_report ?id=weekday-report&queue=reports&max=3\n",
)


class SayHello(msgspec.Struct):
    message: str


@app.task("say_hello")
def say_hello(payload: SayHello) -> None:
    """Greet whoever the cron item says."""
    print(f"Hello {payload.message}!\n", end="", flush=True)


@app.task("nightly_report")
def nightly_report(payload: dict[str, object]) -> None:
    """Runs at 04:00 UTC on weekdays; the payload carries _cron.ts, the scheduled minute."""
    print(f"Nightly report for {payload['_cron']}\n", end="", flush=True)


app.cron(
    Cron.every_n_minutes(say_hello, 2)
    .fill(timedelta(minutes=10))
    .job_key("say_hello_dedupe")
    .job_key_mode("preserve_run_at")
    .payload(SayHello(message="Crontab"))
)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.run()


if __name__ == "__main__":
    main()
