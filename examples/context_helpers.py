"""A task that schedules the next step of a workflow: ``send_ws`` defers ``check_ws``.

Run it with ``python examples/context_helpers.py``. The follow-up is due 10 seconds
later (``CHECK_DELAY`` seconds, if set); the worker picks it up when it is due, then the
example stops.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime, timedelta

import msgspec

from pgworker import App, JobContext

app = App(concurrency=2, poll_interval=0.5)
CHECK_DELAY = timedelta(seconds=float(os.environ.get("CHECK_DELAY", "10")))
checked = threading.Event()


class SendWs(msgspec.Struct):
    request_id: str


class CheckWs(msgspec.Struct):
    request_id: str


@app.task("check_ws")
def check_ws(payload: CheckWs, ctx: JobContext) -> None:
    """The second step: check on the request the first step sent."""
    print(f"Checking request {payload.request_id} (job {ctx.job.id})\n", end="", flush=True)
    checked.set()


@app.task("send_ws")
def send_ws(payload: SendWs, ctx: JobContext) -> None:
    """The first step: send the request, then schedule its check for later."""
    print(f"Sending request {payload.request_id}\n", end="", flush=True)
    follow_up = check_ws.defer(
        CheckWs(request_id=payload.request_id),
        run_at=datetime.now(UTC) + CHECK_DELAY,
    )
    ctx.logger.info("scheduled check %d for %s", follow_up.id, follow_up.run_at)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        send_ws.defer(SendWs(request_id="req-1"))
        handle = app.start()
        done = checked.wait(30)
        handle.stop()
    if not done:
        raise SystemExit("the follow-up job did not run")
    print("Workflow done.")


if __name__ == "__main__":
    main()
