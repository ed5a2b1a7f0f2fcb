"""Migrations against live traffic: lock_timeout with retries, no-transaction migrations, writers unharmed."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg2
import pytest

from bridge_db import engine, inspection
from bridge_db.discovery import discover_migrations
from bridge_db.errors import MigrationFailed, ValidationFailed

from catalog import bridge_tables
from conftest import make_target

FAST = {"lock_timeout_ms": 200, "retry_backoff_ms": 100}


def _add(folder, number: int, forward: str, rollback: str = "SELECT 1;\n", name: str = "change") -> None:
    (folder / f"{number:03d}_{name}.sql").write_text(forward)
    (folder / f"{number:03d}_rollback_{name}.sql").write_text(rollback)


class Writer(threading.Thread):
    """Application traffic: inserts into node_registrations until stopped; counts rows and errors."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.rows, self.errors = dsn, threading.Event(), 0, []

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn, application_name="bridge-app-load")
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                try:
                    cur.execute(
                        "INSERT INTO node_registrations (node_id, node_type, node_version) VALUES (%s, 'load', '1')",
                        (uuid.uuid4().hex,),
                    )
                    self.rows += 1
                except psycopg2.Error as exc:
                    self.errors.append(str(exc))
                time.sleep(0.005)
        conn.close()


def _long_transaction(db, table: str):
    """A reader that keeps a transaction open on `table` (ACCESS SHARE), like a slow report."""
    conn = psycopg2.connect(db.dsn, application_name="slow-report")
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
    return conn  # transaction left open until rollback()


def test_lock_timeout_retries_until_the_long_transaction_ends_and_writers_see_no_error(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _add(
        migrations_copy,
        7,
        "ALTER TABLE node_registrations ADD COLUMN IF NOT EXISTS region text;\n",
        "ALTER TABLE node_registrations DROP COLUMN IF EXISTS region;\n",
    )
    writer = Writer(db.dsn)
    writer.start()
    report = _long_transaction(db, "node_registrations")
    threading.Timer(1.0, report.rollback).start()  # the report finishes after a second
    retries = []

    class Watch(engine.Progress):
        def retrying(self, migration, attempt, retries_total, delay, blockers):
            retries.append(blockers)

    try:
        result = engine.migrate(
            db.target(lock_retries=20, **FAST), discover_migrations(migrations_copy), progress=Watch()
        )
    finally:
        writer.stop.set()
        writer.join()
        report.close()
    assert [s.version for s in result.steps] == [7]
    assert retries, "the migration never had to wait"
    assert any(b["application"] == "slow-report" for b in retries[0])
    assert writer.errors == [] and writer.rows > 0
    failed_attempts = db.query("SELECT count(*) FROM schema_migrations_log WHERE version = 7 AND NOT success")
    assert failed_attempts[0][0] == len(retries)


def test_lock_timeout_gives_up_naming_the_blocker_and_changes_nothing(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _add(migrations_copy, 7, "ALTER TABLE workflow_steps ADD COLUMN IF NOT EXISTS worker text;\n")
    report = _long_transaction(db, "workflow_steps")
    with report.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    writer = Writer(db.dsn)
    writer.start()
    try:
        with pytest.raises(MigrationFailed) as failure:
            engine.migrate(db.target(lock_retries=2, **FAST), discover_migrations(migrations_copy))
    finally:
        writer.stop.set()
        writer.join()
        report.rollback()
        report.close()
    message = failure.value.message
    assert "007_change.sql:1: could not get a lock within 200 ms, 3 attempts" in message
    assert f"pid {pid} (" in message and "slow-report" in message and "AccessShareLock" in message
    assert db.query("SELECT count(*) FROM information_schema.columns WHERE column_name = 'worker'") == [(0,)]
    assert db.query("SELECT max(version) FROM schema_migrations") == [(6,)]
    assert writer.errors == []


def test_statement_timeout_comes_from_the_policy(db, migrations_copy):
    _add(migrations_copy, 7, "SELECT pg_sleep(2);\n")
    with pytest.raises(MigrationFailed, match="canceling statement due to statement timeout"):
        engine.migrate(db.target(statement_timeout_ms=300), discover_migrations(migrations_copy))
    assert db.query("SELECT max(version) FROM schema_migrations") == [(6,)]


NO_TX = "-- bridge:no-transaction\n"


def test_create_index_concurrently_runs_outside_a_transaction(db, migrations_copy):
    _add(
        migrations_copy,
        7,
        NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_node_registrations_node_version "
        "ON node_registrations (node_version);\n",
        NO_TX + "DROP INDEX CONCURRENTLY IF EXISTS idx_node_registrations_node_version;\n",
    )
    migrations = discover_migrations(migrations_copy)
    engine.migrate(db.target(), migrations)
    assert db.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_node_registrations_node_version'::regclass"
    ) == [(True,)]
    assert inspection.verify(db.target(), migrations).ok
    engine.rollback(db.target(), migrations)
    assert db.query("SELECT to_regclass('idx_node_registrations_node_version')") == [(None,)]
    assert db.query("SELECT max(version) FROM schema_migrations") == [(6,)]


def test_invalid_index_from_a_failed_concurrent_build_is_rebuilt(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query(
        "INSERT INTO node_registrations (node_id, node_type, node_version) VALUES ('a', 't', '9'), ('b', 't', '9')"
    )
    _add(
        migrations_copy,
        7,
        NO_TX + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_node_registrations_node_version "
        "ON node_registrations (node_version);\n",
    )
    with pytest.raises(MigrationFailed, match="could not create unique index"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    invalid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('uq_node_registrations_node_version')"
    assert db.query(invalid) == [(False,)]  # what PostgreSQL leaves behind
    db.query("DELETE FROM node_registrations WHERE node_id = 'b'")
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert db.query(invalid) == [(True,)]  # dropped and built again, not skipped by IF NOT EXISTS


def test_no_transaction_migration_resumes_after_the_last_completed_statement(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query(
        "INSERT INTO node_registrations (node_id, node_type, node_version) VALUES ('a', 't', '9'), ('b', 't', '9')"
    )
    _add(
        migrations_copy,
        7,
        NO_TX
        + "CREATE INDEX CONCURRENTLY idx_ws_started ON workflow_steps (step_name);\n"  # no IF NOT EXISTS
        + "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ws_completed ON workflow_steps (execution_time_ms);\n"
        + "CREATE UNIQUE INDEX CONCURRENTLY uq_nr_version ON node_registrations (node_version);\n",
    )
    with pytest.raises(MigrationFailed, match="could not create unique index"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert db.query("SELECT statement_index FROM schema_migrations_progress WHERE version = 7") == [(1,)]
    built = "SELECT pg_relation_filenode('idx_ws_started')"
    before = db.query(built)
    db.query("DELETE FROM node_registrations WHERE node_id = 'b'")
    result = engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert [s.version for s in result.steps] == [7]
    assert db.query(built) == before  # statement 0 was not run again (it would fail: no IF NOT EXISTS)
    assert db.query("SELECT count(*) FROM schema_migrations_progress") == [(0,)]


@pytest.mark.parametrize(
    "body, match",
    [
        ("BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;\n", "007_change.sql:1: transaction control \\(BEGIN\\)"),
        ("CREATE TABLE t (id int);\nROLLBACK;\n", "007_change.sql:2: transaction control"),
        ("CREATE INDEX CONCURRENTLY i ON workflow_steps (status);\n", "cannot run inside a transaction"),
    ],
)
def test_transaction_control_and_concurrent_builds_in_managed_files_are_refused(db, migrations_copy, body, match):
    _add(migrations_copy, 7, body)
    with pytest.raises(ValidationFailed, match=match):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert bridge_tables(db.connect()) == []  # refused before 001..006 ran


def test_no_transaction_migration_cannot_join_a_single_transaction_run(db, migrations_copy):
    _add(migrations_copy, 7, NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS i7 ON workflow_steps (status);\n")
    with pytest.raises(ValidationFailed, match="cannot join a single-transaction run"):
        engine.migrate(make_target(db.dsn, single_transaction=True), discover_migrations(migrations_copy))
    assert bridge_tables(db.connect()) == []
