"""The local queue: claim jobs in batches ahead of the executors, and record outcomes in
batches. Defers 20 short jobs and runs them with a local queue of 50, a one-minute TTL
and a refetch delay; a plugin logs each batch the worker fetches.

Run it with ``python examples/local_queue.py``; the CLI's ``--prefetch 50`` sets the size
alone.
"""

from __future__ import annotations

import logging

import msgspec

from pgworker import App, Job, LocalQueue, Plugin, RefetchDelay

logger = logging.getLogger("examples.local_queue")


class FetchLog(Plugin):
    """Logs what the worker fetches; a fetch that finds nothing is logged once."""

    def __init__(self) -> None:
        self.fetched = 0

    def on_job_fetched(self, job: Job) -> None:
        self.fetched += 1
        logger.info("Fetched job #%d (%d so far)", job.id, self.fetched)

    def on_fetch_empty(self) -> None:
        logger.info("Fetched nothing: %d job(s) fetched in all", self.fetched)


app = App(
    concurrency=4,
    prefetch=LocalQueue(
        size=50,  # jobs claimed beyond the 4 running, in one statement
        ttl=60.0,  # a job not started within a minute goes back, its attempt refunded
        refetch_delay=RefetchDelay(0.1, threshold=5, max_abort_threshold=20),
    ),
    complete_batch_delay=0.01,  # gather successes for 10 ms into one statement
    fail_batch_delay=0.01,
    plugins=[FetchLog()],
)


class ProcessItem(msgspec.Struct):
    item_id: int


@app.task("process_item")
def process_item(payload: ProcessItem) -> None:
    """Process one item (here: say so)."""
    print(f"Processed item {payload.item_id}\n", end="", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        process_item.defer_many([ProcessItem(item_id=i) for i in range(20)])
        app.run_once()
    print("All items processed.")


if __name__ == "__main__":
    main()
