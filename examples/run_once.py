"""A bounded pass instead of a long-running worker: defer 10 jobs, run what is due, exit.

Run it with ``python examples/run_once.py``; the CLI equivalent is
``pgworker run examples.run_once:app --once``.
"""

from __future__ import annotations

import logging

import msgspec

from pgworker import App

app = App(concurrency=4)


class SayHello(msgspec.Struct):
    message: str


@app.task("say_hello")
def say_hello(payload: SayHello) -> None:
    """Print the greeting; succeeds every time."""
    print(f"Hello {payload.message}!\n", end="", flush=True)  # one write: no interleaving


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        for i in range(10):
            say_hello.defer(SayHello(message=f"job {i}"))
        app.run_once()
    print("All runnable jobs done.")


if __name__ == "__main__":
    main()
