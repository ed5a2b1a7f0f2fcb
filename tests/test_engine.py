"""Apply, roll back, dry-run, failures and prerequisites, through the engine against real PostgreSQL."""

from __future__ import annotations

import pytest

from bridge_db import engine, inspection
from bridge_db.discovery import discover_migrations
from bridge_db.errors import MigrationFailed, PrerequisiteMissing, UsageError, ValidationFailed

from catalog import bridge_tables, snapshot
from conftest import HEAD, SHIPPED, make_target


def _snap(db, include_engine_tables=False):
    conn = db.connect()
    try:
        return snapshot(conn, include_engine_tables)
    finally:
        conn.close()


def _history(db) -> list[tuple]:
    return db.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version")


def _log(db) -> list[tuple]:
    return db.query("SELECT action, version, success FROM schema_migrations_log ORDER BY id")


def test_apply_all_records_history_then_rollback_all_leaves_nothing(db, migrations):
    empty = _snap(db)
    result = engine.migrate(db.target(), migrations)
    assert [s.version for s in result.steps] == SHIPPED
    assert result.head_before is None and result.head_after == HEAD
    assert [(v, n) for v, n, _ in _history(db)] == [(m.version, m.name) for m in migrations]
    assert [c for _, _, c in _history(db)] == [m.checksum for m in migrations]
    applied_by = db.query("SELECT DISTINCT applied_by FROM schema_migrations")
    assert applied_by == db.query("SELECT current_user::text")

    result = engine.rollback(db.target(), migrations, to_version=0)
    assert [s.version for s in result.steps] == SHIPPED[::-1]
    assert result.head_after is None
    assert _history(db) == []
    assert _snap(db) == empty
    assert bridge_tables(db.connect()) == []
    assert _log(db) == [("apply", v, True) for v in SHIPPED] + [("rollback", v, True) for v in SHIPPED[::-1]]


def test_every_migration_up_down_up_gives_an_identical_catalog(db, migrations):
    for migration in migrations:
        before = _snap(db)
        engine.migrate(db.target(), migrations, to_version=migration.version)
        after_up = _snap(db)
        assert after_up != before, f"{migration.label} changed nothing"
        engine.rollback(db.target(), migrations, steps=1)
        assert _snap(db) == before, f"{migration.label}: rollback did not restore the catalog"
        engine.migrate(db.target(), migrations, to_version=migration.version)
        assert _snap(db) == after_up, f"{migration.label}: re-apply differs from the first apply"


def test_second_migrate_is_a_no_op(db, migrations):
    engine.migrate(db.target(), migrations)
    log_rows = len(_log(db))
    result = engine.migrate(db.target(), migrations)
    assert result.steps == [] and result.head_after == HEAD
    assert len(_log(db)) == log_rows


def test_rollback_of_nothing_is_a_clear_no_op(db, migrations):
    result = engine.rollback(db.target(), migrations, steps=3)
    assert result.steps == [] and result.head_after is None
    engine.migrate(db.target(), migrations, to_version=2)
    result = engine.rollback(db.target(), migrations, to_version=5)
    assert result.steps == [] and result.head_after == 2


def test_rollback_steps_and_to(db, migrations):
    engine.migrate(db.target(), migrations)
    assert [s.version for s in engine.rollback(db.target(), migrations).steps] == [HEAD]
    assert [s.version for s in engine.rollback(db.target(), migrations, steps=2).steps] == [HEAD - 1, HEAD - 2]
    assert [s.version for s in engine.rollback(db.target(), migrations, to_version=1).steps] == list(
        range(HEAD - 3, 1, -1)
    )
    assert [v for v, _, _ in _history(db)] == [1]


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": 1, "to_version": 2}, {"to_version": -1}])
def test_rollback_rejects_bad_arguments(db, migrations, kwargs):
    with pytest.raises(UsageError):
        engine.rollback(db.target(), migrations, **kwargs)


def test_migrate_to_unknown_version_is_a_usage_error(db, migrations):
    with pytest.raises(UsageError, match="no such migration"):
        engine.migrate(db.target(), migrations, to_version=42)


def test_dry_run_prints_plan_and_sql_and_changes_nothing(db, migrations):
    before = _snap(db, include_engine_tables=True)
    result = engine.migrate(db.target(), migrations, dry_run=True)
    assert [s.version for s in result.steps] == SHIPPED
    assert "CREATE TABLE IF NOT EXISTS workflow_executions" in result.steps[0].sql
    assert _snap(db, include_engine_tables=True) == before  # not even the history table

    engine.migrate(db.target(), migrations)
    before = _snap(db, include_engine_tables=True)
    history = _history(db)
    result = engine.rollback(db.target(), migrations, to_version=4, dry_run=True)
    assert [s.version for s in result.steps] == SHIPPED[4:][::-1]
    assert "DROP TABLE IF EXISTS metadata_stamps" in result.steps[-2].sql
    assert _snap(db, include_engine_tables=True) == before
    assert _history(db) == history


def _add_failing_migration(folder, statement="SELECT 1/0;", rollback="SELECT 1;"):
    (folder / "007_create_broken.sql").write_text(
        "-- Migration 007: broken on purpose\n"
        "CREATE TABLE IF NOT EXISTS half_done (id int);\n"
        "CREATE INDEX IF NOT EXISTS idx_half_done_id ON half_done (id);\n\n"
        f"{statement}\n"
    )
    (folder / "007_rollback_broken.sql").write_text(f"{rollback}\n")


def test_failing_migration_leaves_no_partial_schema_and_no_history_row(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _add_failing_migration(migrations_copy)
    before = _snap(db)
    history = _history(db)
    with pytest.raises(MigrationFailed) as failure:
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert "007_create_broken.sql:5" in failure.value.message  # file and line of the failing statement
    assert "division by zero" in failure.value.message
    assert failure.value.exit_code == 6
    assert _snap(db) == before
    assert _history(db) == history
    assert _log(db)[-1] == ("apply", 7, False)  # the attempt is in the log, not in the history


def test_error_line_points_inside_a_multi_line_statement(db, migrations_copy):
    _add_failing_migration(migrations_copy, "CREATE TABLE IF NOT EXISTS t (\n  a int,\n  b no_such_type\n);")
    with pytest.raises(MigrationFailed) as failure:
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert "007_create_broken.sql:7" in failure.value.message
    assert failure.value.details["sqlstate"] == "42704"


def test_single_transaction_is_all_or_nothing(db, migrations_copy):
    _add_failing_migration(migrations_copy)
    with pytest.raises(MigrationFailed):
        engine.migrate(db.target(), discover_migrations(migrations_copy), single_transaction=True)
    assert bridge_tables(db.connect()) == []
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]  # not even the history tables

    # without it, 001..006 stay applied and only 007 is rolled back
    with pytest.raises(MigrationFailed):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert [v for v, _, _ in _history(db)] == [1, 2, 3, 4, 5, 6]


def test_policy_single_transaction_comes_from_the_environment(db, migrations_copy):
    _add_failing_migration(migrations_copy)
    with pytest.raises(MigrationFailed):
        engine.migrate(db.target(single_transaction=True), discover_migrations(migrations_copy))
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]


def test_failing_rollback_keeps_the_migration_applied(db, migrations_copy):
    _add_failing_migration(migrations_copy, statement="SELECT 1;", rollback="DROP TABLE half_done;\nSELECT 1/0;")
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    with pytest.raises(MigrationFailed, match="007_rollback_broken.sql:2"):
        engine.rollback(db.target(), discover_migrations(migrations_copy))
    assert [v for v, _, _ in _history(db)][-1] == 7
    assert "half_done" in bridge_tables(db.connect())


def test_syntax_error_is_reported_with_line_before_any_ddl(db, migrations_copy):
    (migrations_copy / "007_create_typo.sql").write_text(
        "-- typo\nCREATE TABLE ok (id int);\nCREAT TABLE oops (id int);\n"
    )
    (migrations_copy / "007_rollback_typo.sql").write_text("DROP TABLE IF EXISTS ok;\n")
    with pytest.raises(ValidationFailed, match=r"007_create_typo.sql:3: syntax error"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert bridge_tables(db.connect()) == []  # 001..006 were not applied either
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]


def test_missing_extension_is_detected_before_any_ddl(bare_db, migrations):
    with pytest.raises(PrerequisiteMissing) as failure:
        engine.migrate(bare_db.target(), migrations)
    assert "uuid-ossp" in failure.value.message
    assert 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";' in failure.value.next_step
    assert failure.value.exit_code == 7
    assert bare_db.query(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
    ) == [(0,)]


def test_migration_005_needs_no_extension(bare_db, migrations):
    """Only files that declare the extension need it: 005 runs on a database without uuid-ossp."""
    assert migrations[4].required_extensions == []
    for m in migrations:
        assert m.required_extensions == (["uuid-ossp"] if "uuid_generate_v4" in m.forward.text else [])
    bare_db.query('CREATE EXTENSION "uuid-ossp"')  # 001..004 need it
    assert engine.migrate(bare_db.target(), migrations, to_version=4).head_after == 4
    bare_db.query('DROP EXTENSION "uuid-ossp" CASCADE')  # and the column defaults that call it
    assert bare_db.query("SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'") == [(0,)]
    result = engine.migrate(bare_db.target(), migrations, to_version=5)
    assert [s.version for s in result.steps] == [5] and result.head_after == 5
    assert bare_db.query("SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'") == [(0,)]


def test_status_reports_applied_pending_and_timestamps(db, migrations):
    engine.migrate(db.target(), migrations, to_version=4)
    report = inspection.status(db.target(), migrations)
    assert [(m.version, m.applied) for m in report.migrations] == [(v, v <= 4) for v in SHIPPED]
    assert report.head == 4 and report.pending == HEAD - 4 and report.problems == []
    assert all(m.applied_at for m in report.migrations[:4])
    assert report.migrations[5].applied_at is None


def test_verify_finds_a_dropped_index_and_column(db, migrations):
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok and report.checked_objects > 80
    db.query("DROP INDEX idx_workflow_steps_status")
    db.query("ALTER TABLE node_registrations DROP COLUMN endpoints")
    report = inspection.verify(db.target(), migrations)
    assert not report.ok
    assert any("idx_workflow_steps_status" in p for p in report.problems)
    assert any("node_registrations.endpoints" in p for p in report.problems)


def test_migration_user_without_create_on_public_gets_a_privilege_hint(db, migrations):
    role = f"bridge_lowpriv_{db.name[-8:]}"
    db.query(f"CREATE ROLE {role} NOLOGIN")
    db.query(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    try:
        # a superuser session that becomes the unprivileged role at start-up: no password needed
        target = make_target(db.dsn + f" options='-c role={role}'")
        with pytest.raises(PrerequisiteMissing) as failure:
            engine.migrate(target, migrations)
        assert "permission denied" in failure.value.message
        assert "GRANT CREATE ON SCHEMA public" in failure.value.next_step
        assert bridge_tables(db.connect()) == []
        assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]
    finally:
        db.query(f"DROP OWNED BY {role}")
        db.query(f"DROP ROLE {role}")


def test_verify_follows_renames_of_tables_columns_and_indexes(db, migrations_copy):
    (migrations_copy / "007_rename_things.sql").write_text(
        "ALTER TABLE node_registrations RENAME COLUMN endpoints TO endpoint_map;\n"
        "ALTER INDEX idx_workflow_steps_status RENAME TO idx_workflow_steps_state;\n"
        "ALTER TABLE fsm_transitions RENAME TO state_transitions;\n"
    )
    (migrations_copy / "007_rollback_rename_things.sql").write_text(
        "ALTER TABLE state_transitions RENAME TO fsm_transitions;\n"
        "ALTER INDEX idx_workflow_steps_state RENAME TO idx_workflow_steps_status;\n"
        "ALTER TABLE node_registrations RENAME COLUMN endpoint_map TO endpoints;\n"
    )
    migrations = discover_migrations(migrations_copy)
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok, report.problems
