"""Jobs enqueued by SQL: a trigger on a users table adds a job for each new row.

Run it with ``python examples/sql_trigger.py``. It creates a ``users`` table with an
AFTER INSERT trigger that calls ``graphile_worker.add_job``, inserts three users in
plain SQL, and runs the worker until each welcome job is done.
"""

from __future__ import annotations

import logging
import threading

import msgspec

from pgworker import App

app = App(concurrency=2)
welcomed = threading.Semaphore(0)

SETUP = """
create table if not exists users (id serial primary key, email text not null);
create or replace function users_welcome() returns trigger language plpgsql as $$
begin
  -- The job is added in the same transaction as the row: no row, no job.
  perform graphile_worker.add_job('send_welcome', json_build_object('email', new.email));
  return new;
end $$;
drop trigger if exists users_welcome on users;
create trigger users_welcome after insert on users
  for each row execute function users_welcome();
"""


class Welcome(msgspec.Struct):
    email: str


@app.task("send_welcome")
def send_welcome(payload: Welcome) -> None:
    """Pretend to send a welcome email."""
    print(f"Welcome, {payload.email}!\n", end="", flush=True)
    welcomed.release()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        handle = app.start()  # listening: the trigger's notification wakes it
        with app.pool.connection() as conn:
            conn.execute(SETUP)
            for email in ("ada@example.com", "alan@example.com", "grace@example.com"):
                conn.execute("insert into users (email) values (%s)", (email,))
        done = all(welcomed.acquire(timeout=30) for _ in range(3))
        handle.stop()
    if not done:
        raise SystemExit("timed out waiting for the welcome jobs")
    print("Every new user was welcomed.")


if __name__ == "__main__":
    main()
