"""A Flask app and a pgworker worker side by side: routes defer jobs with priority,
run_at and job keys, and one defers inside the request's own database transaction.

Run it with ``python examples/web_flask.py`` (needs ``pip install -e '.[flask]'`` from a clone),
then try ``curl -X POST 'localhost:5000/schedule/example?name=a&value=1'``.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta

import msgspec
from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from psycopg import sql

from pgworker import App, JobContext

app = App(concurrency=2)
web = Flask(__name__)

SIGNUPS_TABLE = "create table if not exists signups (id serial primary key, email text not null)"


class ExampleTask(msgspec.Struct):
    name: str
    value: int


class Welcome(msgspec.Struct):
    signup_id: int
    email: str


@app.task("example_task")
def example_task(payload: ExampleTask) -> None:
    """Log the values it was given, taking a little time."""
    print(f"example_task: {payload.name}={payload.value}\n", end="", flush=True)
    time.sleep(0.1)


@app.task("database_task")
def database_task(payload: dict[str, str], ctx: JobContext) -> None:
    """Count the jobs in the queue through the worker's own pool."""
    query = sql.SQL("select count(*) from {}.jobs").format(sql.Identifier(ctx.app.schema))
    with ctx.connection() as conn:
        row = conn.execute(query).fetchone()
    print(f"database_task: {row[0] if row else 0} job(s) in the queue\n", end="", flush=True)


@app.task("send_welcome")
def send_welcome(payload: Welcome) -> None:
    """Welcome a new signup."""
    print(f"send_welcome: {payload.email} (signup {payload.signup_id})\n", end="", flush=True)


@web.get("/health")
def health() -> ResponseReturnValue:
    return "ok"


@web.post("/schedule/example")
def schedule_example() -> ResponseReturnValue:
    job = example_task.defer(
        {"name": request.args.get("name", "example"), "value": request.args.get("value", 0, int)}
    )
    return jsonify(job_id=job.id), 202


@web.post("/schedule/database")
def schedule_database() -> ResponseReturnValue:
    # Urgent, but not before 10 seconds; one pending job per second at most.
    job = database_task.defer(
        {"query": request.args.get("query", "count")},
        priority=-10,
        run_at=datetime.now(UTC) + timedelta(seconds=10),
        job_key=f"db_task_{int(time.time())}",
    )
    return jsonify(job_id=job.id, run_at=job.run_at.isoformat()), 202


@web.post("/signup")
def signup() -> ResponseReturnValue:
    email = request.args.get("email", "")
    # The row and its welcome job commit together, or not at all.
    with app.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            "insert into signups (email) values (%s) returning id", (email,)
        ).fetchone()
        assert row is not None
        job = send_welcome.defer({"signup_id": row[0], "email": email}, conn=conn)
        if "@" not in email:
            abort(400, "not an email address")  # rolls back: no signup, no job
    return jsonify(signup_id=row[0], job_id=job.id), 201


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    with app:  # DATABASE_URL, PG*, or an embedded development server
        app.migrate()
        with app.pool.connection() as conn:
            conn.execute(SIGNUPS_TABLE)
        handle = app.start()
        try:
            web.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
        finally:
            handle.stop()


if __name__ == "__main__":
    main()
