"""Migration lint: squawk's locking rules plus the project's own, on the shipped files and bad ones."""

from __future__ import annotations

import json

from bridge_db.discovery import discover_migrations
from bridge_db.lint import lint_migrations

from conftest import HEAD, run_cli


def _rules(folder) -> set[str]:
    return {f.rule for f in lint_migrations(discover_migrations(folder))}


def test_shipped_migrations_are_clean():
    out = run_cli("lint", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"migrations": HEAD, "findings": []}


def test_index_on_a_busy_table_without_concurrently_is_flagged(migrations_copy):
    (migrations_copy / "007_add_index_steps_name.sql").write_text(
        "-- Migration 007\nCREATE INDEX IF NOT EXISTS idx_workflow_steps_step_name ON workflow_steps (step_name);\n"
    )
    (migrations_copy / "007_rollback_add_index_steps_name.sql").write_text(
        "-- Rollback 007\nDROP INDEX IF EXISTS idx_workflow_steps_step_name;\n"
    )
    assert "require-concurrent-index-creation" in _rules(migrations_copy)
    out = run_cli("lint", "--migrations-dir", str(migrations_copy))
    assert out.returncode == 5 and "007_add_index_steps_name.sql:2" in out.stdout


def test_project_rules_catch_what_squawk_does_not(migrations_copy):
    (migrations_copy / "007_create_notes.sql").write_text(
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\nCOMMENT ON TABLE notes IS 'x';\n"
    )
    (migrations_copy / "007_rollback_notes.sql").write_text("-- Rollback 007\nDROP TABLE notes;\n")
    findings = {(f.file, f.rule) for f in lint_migrations(discover_migrations(migrations_copy), use_squawk=False)}
    assert ("007_create_notes.sql", "bridge-header") in findings
    assert ("007_create_notes.sql", "bridge-if-not-exists") in findings
    assert ("007_create_notes.sql", "bridge-comment") in findings  # columns id and body
    assert ("007_rollback_notes.sql", "bridge-if-exists") in findings


def test_a_scaffolded_pair_passes_lint(migrations_copy):
    assert run_cli("new", "add_audit_view", "--migrations-dir", str(migrations_copy)).returncode == 0
    out = run_cli("lint", "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0, out.stdout
