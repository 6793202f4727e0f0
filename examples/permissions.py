"""Two roles: a worker role that owns the worker schema, and a web role that can only add jobs.

Run it with ``python examples/permissions.py`` as a role that may create roles (the
embedded development server's, or a superuser's DATABASE_URL). It creates the two roles,
lets the worker role migrate and grant the web role enqueueing, adds two jobs as the web
role, shows that the web role cannot read the jobs, runs them as the worker role, and
drops the roles again. docs/permissions.md explains the model.
"""

from __future__ import annotations

import logging
import secrets
import threading

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgworker import App, PgWorkerError

#: Where the SECURITY DEFINER functions live: grant_enqueue's default for graphile_worker.
ENQUEUE_SCHEMA = "graphile_worker_enqueue"
ran = threading.Semaphore(0)


class Order(msgspec.Struct):
    order_id: int
    email: str


def send_receipt(order: Order) -> None:
    """Pretend to send the receipt of an order."""
    print(f"ran order {order.order_id} for {order.email}\n", end="", flush=True)
    ran.release()


def make_app(url: str) -> App:
    """The app both roles use; each connects as itself. With enqueue_schema set, defer
    goes through the definer functions (the worker role owns them, so it may too)."""
    app = App(database_url=url, enqueue_schema=ENQUEUE_SCHEMA, concurrency=2)
    app.task("send_receipt")(send_receipt)
    return app


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(message)s")
    suffix = secrets.token_hex(3)
    worker_role, web_role = f"demo_worker_{suffix}", f"demo_web_{suffix}"
    with App() as admin:  # DATABASE_URL, PG*, or an embedded development server
        admin_url = admin.conninfo
        with admin.pool.connection() as conn:
            # Once, by an administrator: the two login roles (give them passwords in real
            # life), and the right to create the worker schema in this database.
            for role in (worker_role, web_role):
                conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("grant create on database {} to {}").format(
                    sql.Identifier(conn.info.dbname), sql.Identifier(worker_role)
                )
            )
        try:
            worker_url = make_conninfo(admin_url, user=worker_role)
            run(worker_url, make_conninfo(admin_url, user=web_role), web_role)
        finally:
            with admin.pool.connection() as conn:
                for role in (web_role, worker_role):
                    conn.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
            print("roles dropped")


def run(worker_url: str, web_url: str, web_role: str) -> None:
    """The worker role sets up and runs; the web role adds jobs."""
    worker = make_app(worker_url)
    web = make_app(web_url)
    with worker, web:
        # As the worker role: install the schema, then let the web role add jobs
        # (the CLI's `pgworker grant-enqueue ROLE` does the same).
        worker.migrate()
        worker.grant_enqueue(web_role)

        # As the web role: defer works as usual; only the new job's id is read back.
        first = web.defer("send_receipt", Order(order_id=1, email="ada@example.com"))
        second = web.defer("send_receipt", Order(order_id=2, email="alan@example.com"))
        print(f"the web role added jobs {first.id} and {second.id}")
        try:
            with web.pool.connection() as conn:
                conn.execute("select payload from graphile_worker._private_jobs")
        except psycopg.errors.InsufficientPrivilege as exc:
            print(f"the web role may not read jobs: {exc.diag.message_primary}")
        try:
            with web.pool.connection() as conn:
                conn.execute("select graphile_worker.add_job('send_receipt')")
        except psycopg.errors.InsufficientPrivilege as exc:
            print(f"nor call graphile_worker.add_job: {exc.diag.message_primary}")

        # As the worker role: run them.
        handle = worker.start()
        done = all(ran.acquire(timeout=30) for _ in range(2))
        handle.stop()
    if not done:
        raise SystemExit("timed out waiting for the jobs")


if __name__ == "__main__":
    try:
        main()
    except PgWorkerError as exc:
        raise SystemExit(f"error: {exc}") from exc
