"""Adding many jobs in one statement: a typed batch of one task, and a mixed raw batch.

Run it with ``python examples/batch_add_jobs.py``.
"""

from __future__ import annotations

import logging

import msgspec

from pgworker import App, RawJob

app = App(concurrency=1)  # one at a time, so the run order shows the priorities


class SendEmail(msgspec.Struct):
    to: str
    subject: str


class ProcessPayment(msgspec.Struct):
    user_id: int
    amount: int


@app.task("send_email")
def send_email(payload: SendEmail) -> None:
    """Pretend to send an email."""
    print(f"Email to {payload.to}: {payload.subject}\n", end="", flush=True)


@app.task("process_payment")
def process_payment(payload: ProcessPayment) -> None:
    """Pretend to charge a user."""
    print(f"Payment of {payload.amount} from user {payload.user_id}\n", end="", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        # One task, typed payloads: checked first, then one add_jobs statement.
        emails = [
            SendEmail(to="alice@example.com", subject="Welcome"),
            SendEmail(to="bob@example.com", subject="Welcome"),
            SendEmail(to="carol@example.com", subject="Welcome"),
        ]
        added = send_email.defer_many(emails)
        print(f"Added {len(added)} send_email jobs in one statement")
        # Several tasks, each job with its own options: the urgent payment runs first.
        mixed = app.defer_raw(
            [
                RawJob("send_email", {"to": "dave@example.com", "subject": "Notification"}),
                RawJob("process_payment", {"user_id": 123, "amount": 50}, priority=-10),
            ]
        )
        print(f"Added {len(mixed)} mixed jobs in one statement")
        app.run_once()


if __name__ == "__main__":
    main()
