"""The engine's own tables: `schema_migrations` (what is applied) and `schema_migrations_log`
(every apply and rollback attempt, failed ones included).

They live in schema `public`, and every statement here names that schema: a migration may change the
session's search_path (`SET search_path`, `set_config('search_path', '', false)`), and the engine's
reads and writes must not follow it. Why `public` and not a schema of their own: the migration user
needs nothing beyond CREATE on `public` (see README: least privilege), every database migrated so far
has its history there, and pg_dump/restore of the schema carries it along. The price is the name: a
`public.schema_migrations` of another tool (dbmate, Rails, golang-migrate) is recognised by its columns
and refused with its own error before anything runs, instead of failing a migration's history write.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime

import psycopg2
import psycopg2.errors

from . import __version__
from .errors import HistoryUnusable, PrerequisiteMissing

HISTORY_SCHEMA = "public"
HISTORY_TABLE = "schema_migrations"
LOG_TABLE = "schema_migrations_log"
PROGRESS_TABLE = "schema_migrations_progress"
ENGINE_TABLES = (HISTORY_TABLE, LOG_TABLE, PROGRESS_TABLE)
# The columns that make a table named schema_migrations ours (rollback_checksum came later: added on upgrade).
HISTORY_COLUMNS = {"version", "name", "checksum", "applied_at", "applied_by", "execution_ms"}

BOOTSTRAP_SQL = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version       integer     PRIMARY KEY CHECK (version > 0),
    name          text        NOT NULL,
    checksum      char(64)    NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    applied_by    text        NOT NULL DEFAULT current_user,
    execution_ms  integer     NOT NULL CHECK (execution_ms >= 0),
    rollback_checksum char(64)
);
COMMENT ON TABLE public.schema_migrations IS
    'Applied OmniNode Bridge migrations, one row per version, written in the migration''s own transaction.';
-- Databases migrated before rollback files were checksummed: their rows keep NULL (not known).
ALTER TABLE public.schema_migrations ADD COLUMN IF NOT EXISTS rollback_checksum char(64);
CREATE TABLE IF NOT EXISTS public.schema_migrations_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        uuid        NOT NULL,
    action        text        NOT NULL,
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
COMMENT ON TABLE public.schema_migrations_log IS
    'Every apply and rollback attempt by bridge-db, failed ones included (their changes were rolled back).';
-- repair (an edited file's checksum accepted) and baseline (history recorded for an existing schema)
-- came later: the check is replaced where it still names only apply and rollback.
ALTER TABLE public.schema_migrations_log DROP CONSTRAINT IF EXISTS schema_migrations_log_action_check;
ALTER TABLE public.schema_migrations_log ADD CONSTRAINT schema_migrations_log_action_check
    CHECK (action IN ('apply', 'rollback', 'repair', 'baseline'));
CREATE TABLE IF NOT EXISTS public.schema_migrations_progress (
    version          integer     PRIMARY KEY,
    action           text        NOT NULL,
    checksum         char(64)    NOT NULL,
    statement_index  integer     NOT NULL,
    completed_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.schema_migrations_progress IS
    'Statements completed by a no-transaction migration that has not finished: a rerun resumes after them.';
-- History is written by migrations only: default privileges may have granted other roles more than
-- SELECT on these new tables (see privileges.py); take it back at once.
DO $$
DECLARE grant_row record;
BEGIN
    FOR grant_row IN
        SELECT DISTINCT c.relname, a.grantee::regrole::text AS grantee
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid IN ('public.schema_migrations'::regclass, 'public.schema_migrations_log'::regclass,
                         'public.schema_migrations_progress'::regclass)
           AND a.grantee NOT IN (0, c.relowner) AND a.privilege_type <> 'SELECT'
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.%I FROM %s',
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
    rollback_checksum: str | None = None  # None: applied before rollback files were checksummed


@dataclass(frozen=True)
class RunContext:
    """Who runs what, written to every log row of one run."""

    environment: str
    run_id: str = field(default_factory=lambda: _new_run_id())
    os_user: str = field(default_factory=lambda: _os_user())
    client_host: str = field(default_factory=socket.gethostname)
    details: dict = field(default_factory=dict)


def _new_run_id() -> str:
    """A random (version 4) UUID, as uuid.uuid4() makes it, without importing uuid (and platform) on every run."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name in a minimal container: fall back to the uid
        return str(os.getuid())


def history_exists(cur) -> bool:
    """Whether bridge-db's history is in this database; refuses another tool's table of the same name."""
    return _history_columns(cur) is not None


def _history_columns(cur) -> set[str] | None:
    """The columns of public.schema_migrations when it and the log are bridge-db's; None when absent.
    One round trip: a no-op run reads this twice (before and under the lock)."""
    cur.execute(
        "SELECT array(SELECT a.attname::text FROM pg_attribute a "
        "              WHERE a.attrelid = to_regclass('public.schema_migrations') AND a.attnum > 0 "
        "                AND NOT a.attisdropped), "
        "       to_regclass('public.schema_migrations_log') IS NOT NULL"
    )
    names, log_exists = cur.fetchone()
    columns = set(names)
    if not columns:
        return None
    if not HISTORY_COLUMNS <= columns:
        raise HistoryUnusable(
            "public.schema_migrations exists but is not bridge-db's history "
            f"(its columns: {', '.join(sorted(columns))}; dbmate, Rails and golang-migrate create such a table); "
            "nothing was run",
            "bridge-db keeps its history in public.schema_migrations: use a database that the other tool does not "
            "manage, or move that tool's table out of schema public (see README: Troubleshooting)",
        )
    return columns if log_exists else None


def ensure_history_tables(cur) -> None:
    """Create whichever engine table or column is missing (every statement of the bootstrap is idempotent)."""
    history_exists(cur)  # refuses a foreign schema_migrations before anything is created beside it
    cur.execute(
        "SELECT bool_and(to_regclass('public.' || t) IS NOT NULL) AND EXISTS (SELECT 1 FROM pg_attribute "
        "WHERE attrelid = to_regclass('public.schema_migrations') AND attname = 'rollback_checksum') "
        "AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('public.schema_migrations_log') "
        "AND conname = 'schema_migrations_log_action_check' AND pg_get_constraintdef(oid) LIKE '%%baseline%%') "
        "FROM unnest(%s::text[]) t",
        (list(ENGINE_TABLES),),
    )
    if not cur.fetchone()[0]:
        try:
            cur.execute(BOOTSTRAP_SQL)
        except psycopg2.errors.InsufficientPrivilege as exc:
            raise PrerequisiteMissing(
                f"cannot create or upgrade bridge-db's history tables in schema public: {_first_line(exc)}",
                "the migration user needs CREATE on schema public (GRANT CREATE ON SCHEMA public TO <user>, "
                "or make it the database owner) and must own existing history tables; see README: Troubleshooting",
            ) from None
        except psycopg2.Error as exc:
            if cur.connection.closed or isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None:
                raise  # a lost connection: the caller reports it as such
            raise HistoryUnusable(
                f"cannot create or upgrade bridge-db's history tables in schema public: {_first_line(exc)} "
                f"(sqlstate {exc.pgcode}); nothing was run",
                "check the objects named schema_migrations* in schema public (another tool's, or locked by a long "
                "transaction), then run again",
            ) from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_progress(cur, version: int, action: str, checksum: str) -> int:
    """Index of the last completed statement of an unfinished no-transaction run, or -1."""
    cur.execute(
        "SELECT statement_index FROM public.schema_migrations_progress "
        "WHERE version = %s AND action = %s AND checksum = %s",
        (version, action, checksum),
    )
    row = cur.fetchone()
    return row[0] if row else -1


def record_progress(cur, version: int, action: str, checksum: str, index: int) -> None:
    cur.execute(
        "INSERT INTO public.schema_migrations_progress (version, action, checksum, statement_index) "
        "VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (version) DO UPDATE SET action = EXCLUDED.action, checksum = EXCLUDED.checksum, "
        "statement_index = EXCLUDED.statement_index, completed_at = now()",
        (version, action, checksum, index),
    )


def clear_progress(cur, version: int) -> None:
    cur.execute("DELETE FROM public.schema_migrations_progress WHERE version = %s", (version,))


def applied_head(cur) -> int | None:
    """The newest applied version, for a backup's manifest: None when there is no history of ours (a
    database beside another tool's schema_migrations is still backed up)."""
    try:
        return max(read_applied(cur), default=None)
    except HistoryUnusable:
        return None


# The whole history and whether the log exists, in one round trip, when the tables are bridge-db's
# current ones (these column names are what makes a schema_migrations table ours). A table that is
# missing, older (no rollback_checksum) or another tool's makes it fail, and the careful path decides.
_READ_APPLIED_AT_ONCE = (
    "SELECT h.version, h.name, h.checksum, h.applied_at, h.applied_by, h.execution_ms, h.rollback_checksum, "
    "l.log_exists FROM (SELECT to_regclass('public.schema_migrations_log') IS NOT NULL) l(log_exists) "
    "LEFT JOIN public.schema_migrations h ON true ORDER BY h.version"
)


def read_applied(cur) -> dict[int, AppliedMigration]:
    if cur.connection.autocommit and cur.connection.info.transaction_status == 0:  # idle: a failure costs nothing
        try:
            cur.execute(_READ_APPLIED_AT_ONCE)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn):
            pass  # no history yet, or an older or foreign table: the careful path below
        else:
            rows = cur.fetchall()
            if rows and rows[0][-1]:  # the log exists too: this is bridge-db's history
                return {row[0]: AppliedMigration(*row[:-1]) for row in rows if row[0] is not None}
    columns = _history_columns(cur)
    if columns is None:
        return {}
    # Tables created before rollback files were checksummed lack the column until the next migrate.
    rollback_checksum = "rollback_checksum" if "rollback_checksum" in columns else "NULL"
    cur.execute(
        "SELECT version, name, checksum, applied_at, applied_by, execution_ms, "
        f"{rollback_checksum} FROM public.schema_migrations ORDER BY version"
    )
    return {row[0]: AppliedMigration(*row) for row in cur.fetchall()}


def record_applied(
    cur, version: int, name: str, checksum: str, execution_ms: int, rollback_checksum: str | None = None
) -> None:
    cur.execute(
        "INSERT INTO public.schema_migrations (version, name, checksum, execution_ms, rollback_checksum) "
        "VALUES (%s, %s, %s, %s, %s)",
        (version, name, checksum, execution_ms, rollback_checksum),
    )


def record_rolled_back(cur, version: int) -> None:
    cur.execute("DELETE FROM public.schema_migrations WHERE version = %s", (version,))


def _json(value: object) -> str:
    import json

    return json.dumps(value)


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
        INSERT INTO public.schema_migrations_log
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
            _json(run.details),
        ),
    )
