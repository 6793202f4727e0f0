"""MigrationStatements: the store's statements that install and upgrade the schema."""

from __future__ import annotations

import json

from .queries import bind_schema, read_sql_file
from .store_base import Connection, StoreBase


class MigrationStatements(StoreBase):
    """What ``migrate`` runs, each on the connection (and transaction) it is given."""

    def server_version(self, conn: Connection) -> int:
        """The server's version as an integer (150004 for 15.4)."""
        row = conn.execute(self.queries["server_version"]).fetchone()
        return int(row[0]) if row else 0

    def take_migration_lock(self, conn: Connection) -> None:
        """Queue behind any other pgworker migrating this schema, until the transaction
        ends."""
        conn.execute(self.queries["take_migration_lock"], {"schema": self.schema})

    def ledger_exists(self, conn: Connection) -> tuple[bool, bool]:
        """Whether the schema has a migrations table, and whether it has ``breaking``."""
        row = conn.execute(self.queries["ledger_exists"], {"schema": self.schema}).fetchone()
        assert row is not None
        return bool(row[0]), bool(row[1])

    def ledger_revisions(self, conn: Connection) -> tuple[int, int]:
        """The latest migration in the ledger, and the latest breaking one."""
        row = conn.execute(self.queries["ledger_state"]).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def record_migrations(self, conn: Connection, revisions: dict[int, bool]) -> None:
        """Write these revisions (each with whether it is breaking) into the ledger."""
        params = {"ids": list(revisions), "breaking": list(revisions.values())}
        conn.execute(self.queries["record_migrations"], params)

    def notify_migration(self, conn: Connection, revision: int, *, breaking: bool) -> None:
        """Tell Node workers listening on ``worker:migrate`` that ``revision`` applied."""
        payload = json.dumps({"migrationNumber": revision, "breaking": breaking})
        conn.execute(self.queries["notify_migration"], {"payload": payload})

    def add_jobs_definition(self, conn: Connection) -> str:
        """The source of the installed ``add_jobs`` function ('' if there is none)."""
        row = conn.execute(self.queries["add_jobs_definition"], {"schema": self.schema}).fetchone()
        return row[0] if row and isinstance(row[0], str) else ""

    def run_sql_file(self, conn: Connection, filename: str) -> None:
        """Run one of the schema files of ``pgworker/sql`` against this schema."""
        conn.execute(bind_schema(read_sql_file(filename), self.schema))
