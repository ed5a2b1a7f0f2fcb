"""A broken migrations folder or drifted history is refused, naming the file, and nothing changes."""

from __future__ import annotations

import os

import pytest

from bridge_db import engine, inspection
from bridge_db.discovery import discover_migrations, normalised_checksum
from bridge_db.errors import ValidationFailed

from catalog import bridge_tables
from conftest import run_cli

# A DSN nobody listens on: validation of the folder must fail before any connection is tried.
NOBODY_HOME = "host=127.0.0.1 port=1 dbname=none user=none connect_timeout=2"


def _refused(folder, match: str):
    with pytest.raises(ValidationFailed, match=match) as failure:
        discover_migrations(folder)
    assert failure.value.exit_code == 5
    out = run_cli("migrate", "--dsn", NOBODY_HOME, "--migrations-dir", str(folder))
    assert out.returncode == 5, out.stderr  # 5 (validation), not 3 (connection): refused before connecting
    assert "error:" in out.stderr and "next:" in out.stderr
    return failure.value


def test_gap_in_numbering(migrations_copy):
    for path in migrations_copy.glob("003_*"):
        path.unlink()
    err = _refused(migrations_copy, "gap in numbering, expected 003 before 004")
    assert err.details["file"].endswith("004_create_bridge_states.sql")


def test_numbering_must_start_at_001(migrations_copy):
    for path in migrations_copy.glob("001_*"):
        path.unlink()
    _refused(migrations_copy, "002_create_workflow_steps.sql: gap in numbering, expected 001")


def test_duplicate_number(migrations_copy):
    (migrations_copy / "003_create_other.sql").write_text("SELECT 1;\n")
    _refused(migrations_copy, "duplicate migration number 003")


def test_orphan_rollback(migrations_copy):
    (migrations_copy / "007_rollback_orphan.sql").write_text("SELECT 1;\n")
    _refused(migrations_copy, "007_rollback_orphan.sql: rollback without a forward migration")


def test_forward_without_rollback(migrations_copy):
    (migrations_copy / "007_create_lonely.sql").write_text("SELECT 1;\n")
    _refused(migrations_copy, "007_create_lonely.sql: no rollback file")


@pytest.mark.parametrize("name", ["notes.txt", "7_create_short_number.sql", "008_Create_Upper.sql", "backup.sql.bak"])
def test_unexpected_file(migrations_copy, name):
    (migrations_copy / name).write_text("SELECT 1;\n")
    _refused(migrations_copy, f"{name}: unexpected file")


def test_symlink_outside_the_folder(migrations_copy, tmp_path):
    outside = tmp_path / "elsewhere.sql"
    outside.write_text("DROP TABLE workflow_executions;\n")
    os.symlink(outside, migrations_copy / "007_create_linked.sql")
    (migrations_copy / "007_rollback_linked.sql").write_text("SELECT 1;\n")
    _refused(migrations_copy, "007_create_linked.sql: is a symlink to")


def test_unknown_directive(migrations_copy, db):
    (migrations_copy / "007_create_typo.sql").write_text("-- bridge:requires-extention pgcrypto\nSELECT 1;\n")
    (migrations_copy / "007_rollback_typo.sql").write_text("SELECT 1;\n")
    with pytest.raises(ValidationFailed, match="unknown directive 'bridge:requires-extention'"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))


@pytest.mark.parametrize("payload", [b"SELECT '\xff\xfe';\n", b"\x00\x01\x02binary\x00garbage"])
def test_invalid_utf8_or_binary_is_refused_and_nothing_runs(migrations_copy, db, payload):
    (migrations_copy / "007_create_garbage.sql").write_bytes(payload)
    (migrations_copy / "007_rollback_garbage.sql").write_text("SELECT 1;\n")
    with pytest.raises(ValidationFailed, match="007_create_garbage.sql"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert bridge_tables(db.connect()) == []


def test_checksum_ignores_line_endings_and_bom():
    lf = b"CREATE TABLE x (id int);\nSELECT 1;\n"
    assert normalised_checksum(lf) == normalised_checksum(lf.replace(b"\n", b"\r\n"))
    assert normalised_checksum(lf) == normalised_checksum(b"\xef\xbb\xbf" + lf)
    assert normalised_checksum(lf) != normalised_checksum(lf.replace(b"x", b"y"))


def test_crlf_checkout_is_not_a_modified_migration(migrations_copy, db):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    for path in migrations_copy.glob("*.sql"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    crlf = discover_migrations(migrations_copy)
    assert inspection.status(db.target(), crlf).problems == []
    assert engine.migrate(db.target(), crlf).steps == []


def test_edited_applied_migration_is_refused_with_both_checksums(migrations_copy, db):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    applied = db.query("SELECT checksum FROM schema_migrations WHERE version = 3")[0][0]
    path = migrations_copy / "003_create_fsm_transitions.sql"
    path.write_text(path.read_text() + "\nCREATE INDEX IF NOT EXISTS idx_sneaky ON fsm_transitions (to_state);\n")
    edited = discover_migrations(migrations_copy)
    with pytest.raises(ValidationFailed) as failure:
        engine.migrate(db.target(), edited)
    message = failure.value.message
    assert "003_create_fsm_transitions.sql was changed after it was applied" in message
    assert applied in message and edited[2].checksum in message
    assert "new migration" in failure.value.next_step
    assert db.query("SELECT to_regclass('idx_sneaky')") == [(None,)]
    with pytest.raises(ValidationFailed):
        engine.rollback(db.target(), edited)

    status = inspection.status(db.target(), edited)
    assert [m.state for m in status.migrations][2] == "modified"
    out = run_cli("status", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy), "--json")
    assert out.returncode == 5


def test_deleted_applied_migration_is_refused(migrations_copy, db):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    for path in migrations_copy.glob("006_*"):
        path.unlink()
    remaining = discover_migrations(migrations_copy)
    with pytest.raises(ValidationFailed, match="applied migration 006 .create_metadata_stamps. has no file"):
        engine.migrate(db.target(), remaining)
    assert inspection.status(db.target(), remaining).migrations[-1].state == "missing"
    assert not inspection.verify(db.target(), remaining).ok


def test_out_of_order_history_is_refused(db, migrations):
    engine.migrate(db.target(), migrations)
    db.query("DELETE FROM schema_migrations WHERE version = 3")
    with pytest.raises(ValidationFailed, match="003_create_fsm_transitions.sql is pending but newer migration 00[67]"):
        engine.migrate(db.target(), migrations)
