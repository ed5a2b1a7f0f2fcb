"""The engine's own tables: `schema_migrations` (what is applied) and `schema_migrations_log`
(every apply and rollback attempt, failed ones included)."""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from . import __version__

HISTORY_TABLE = "schema_migrations"
LOG_TABLE = "schema_migrations_log"
PROGRESS_TABLE = "schema_migrations_progress"
ENGINE_TABLES = (HISTORY_TABLE, LOG_TABLE, PROGRESS_TABLE)

BOOTSTRAP_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version       integer     PRIMARY KEY CHECK (version > 0),
    name          text        NOT NULL,
    checksum      char(64)    NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    applied_by    text        NOT NULL DEFAULT current_user,
    execution_ms  integer     NOT NULL CHECK (execution_ms >= 0)
);
COMMENT ON TABLE schema_migrations IS
    'Applied OmniNode Bridge migrations, one row per version, written in the migration''s own transaction.';
CREATE TABLE IF NOT EXISTS schema_migrations_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        uuid        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('apply', 'rollback')),
    version       integer     NOT NULL,
    name          text        NOT NULL,
    checksum      char(64)    NOT NULL,
    success       boolean     NOT NULL,
    error         text,
    started_at    timestamptz NOT NULL,
    execution_ms  integer     NOT NULL CHECK (execution_ms >= 0),
    db_user       text        NOT NULL DEFAULT current_user,
    os_user       text,
    client_host   text,
    environment   text,
    tool_version  text,
    details       jsonb       NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE schema_migrations_log IS
    'Every apply and rollback attempt by bridge-db, failed ones included (their changes were rolled back).';
CREATE TABLE IF NOT EXISTS schema_migrations_progress (
    version          integer     PRIMARY KEY,
    action           text        NOT NULL,
    checksum         char(64)    NOT NULL,
    statement_index  integer     NOT NULL,
    completed_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations_progress IS
    'Statements completed by a no-transaction migration that has not finished: a rerun resumes after them.';
-- History is written by migrations only: default privileges may have granted other roles more than
-- SELECT on these new tables (see privileges.py); take it back at once.
DO $$
DECLARE grant_row record;
BEGIN
    FOR grant_row IN
        SELECT DISTINCT c.relname, a.grantee::regrole::text AS grantee
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid IN ('schema_migrations'::regclass, 'schema_migrations_log'::regclass,
                         'schema_migrations_progress'::regclass)
           AND a.grantee NOT IN (0, c.relowner) AND a.privilege_type <> 'SELECT'
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON %I FROM %s',
                       grant_row.relname, grant_row.grantee);
    END LOOP;
END
$$;
"""


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str
    execution_ms: int


@dataclass(frozen=True)
class RunContext:
    """Who runs what, written to every log row of one run."""

    environment: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    os_user: str = field(default_factory=lambda: _os_user())
    client_host: str = field(default_factory=socket.gethostname)
    details: dict = field(default_factory=dict)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in a minimal container: fall back to the uid
        return str(os.getuid())


def history_exists(cur) -> bool:
    cur.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL AND to_regclass('schema_migrations_log') IS NOT NULL"
    )
    return bool(cur.fetchone()[0])


def ensure_history_tables(cur) -> None:
    """Create whichever engine table is missing (every statement of the bootstrap is idempotent)."""
    cur.execute("SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t", (list(ENGINE_TABLES),))
    if not cur.fetchone()[0]:
        cur.execute(BOOTSTRAP_SQL)


def read_progress(cur, version: int, action: str, checksum: str) -> int:
    """Index of the last completed statement of an unfinished no-transaction run, or -1."""
    cur.execute(
        "SELECT statement_index FROM schema_migrations_progress WHERE version = %s AND action = %s AND checksum = %s",
        (version, action, checksum),
    )
    row = cur.fetchone()
    return row[0] if row else -1


def record_progress(cur, version: int, action: str, checksum: str, index: int) -> None:
    cur.execute(
        "INSERT INTO schema_migrations_progress (version, action, checksum, statement_index) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (version) DO UPDATE SET action = EXCLUDED.action, checksum = EXCLUDED.checksum, "
        "statement_index = EXCLUDED.statement_index, completed_at = now()",
        (version, action, checksum, index),
    )


def clear_progress(cur, version: int) -> None:
    cur.execute("DELETE FROM schema_migrations_progress WHERE version = %s", (version,))


def read_applied(cur) -> dict[int, AppliedMigration]:
    if not history_exists(cur):
        return {}
    cur.execute(
        "SELECT version, name, checksum, applied_at, applied_by, execution_ms FROM schema_migrations ORDER BY version"
    )
    return {row[0]: AppliedMigration(*row) for row in cur.fetchall()}


def record_applied(cur, version: int, name: str, checksum: str, execution_ms: int) -> None:
    cur.execute(
        "INSERT INTO schema_migrations (version, name, checksum, execution_ms) VALUES (%s, %s, %s, %s)",
        (version, name, checksum, execution_ms),
    )


def record_rolled_back(cur, version: int) -> None:
    cur.execute("DELETE FROM schema_migrations WHERE version = %s", (version,))


def log_step(
    cur,
    run: RunContext,
    action: str,
    version: int,
    name: str,
    checksum: str,
    *,
    success: bool,
    started_at: datetime,
    execution_ms: int,
    error: str | None = None,
) -> None:
    cur.execute(
        """
        INSERT INTO schema_migrations_log
            (run_id, action, version, name, checksum, success, error, started_at, execution_ms,
             os_user, client_host, environment, tool_version, details)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            run.run_id,
            action,
            version,
            name,
            checksum,
            success,
            error,
            started_at,
            execution_ms,
            run.os_user,
            run.client_host,
            run.environment,
            __version__,
            json.dumps(run.details),
        ),
    )
