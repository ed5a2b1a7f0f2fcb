"""The migration files under plain psql, exactly as the seed README runs them."""

from __future__ import annotations

import os
import subprocess

import psycopg2.extensions
import pytest

from bridge_db import engine, inspection
from bridge_db.discovery import discover_migrations

from catalog import bridge_tables, snapshot
from conftest import HEAD, MIGRATIONS, ROOT, SHIPPED

FORWARD = sorted(p for p in MIGRATIONS.glob("00*.sql") if "_rollback_" not in p.name)
ROLLBACK = sorted(MIGRATIONS.glob("*_rollback_*.sql"), reverse=True)


def _snap(db):
    conn = db.connect()
    try:
        return snapshot(conn)
    finally:
        conn.close()


def test_seed_file_list_is_complete():
    names = sorted(p.name for p in MIGRATIONS.iterdir())
    assert names == sorted(
        [
            "README.md",
            "001_create_workflow_executions.sql",
            "001_rollback_workflow_executions.sql",
            "002_create_workflow_steps.sql",
            "002_rollback_workflow_steps.sql",
            "003_create_fsm_transitions.sql",
            "003_rollback_fsm_transitions.sql",
            "004_create_bridge_states.sql",
            "004_rollback_bridge_states.sql",
            "005_create_node_registrations.sql",
            "005_rollback_node_registrations.sql",
            "006_create_metadata_stamps.sql",
            "006_rollback_metadata_stamps.sql",
            "007_add_node_registrations_health_endpoint.sql",
            "007_rollback_node_registrations_health_endpoint.sql",
        ]
    )


@pytest.mark.parametrize("mode", ["file", "stdin"])
def test_each_forward_file_runs_twice_under_psql_without_error_or_change(db, mode):
    def run(path):
        return db.psql("-f", str(path)) if mode == "file" else db.psql(stdin=path.read_bytes())

    for path in FORWARD:
        run(path)
        after_first = _snap(db)
        second = run(path)
        assert b"ERROR" not in second.stderr, second.stderr
        assert _snap(db) == after_first, f"{path.name} changed the schema when run a second time"


@pytest.mark.parametrize("mode", ["file", "stdin"])
def test_each_rollback_file_runs_twice_under_psql(db, mode):
    for path in FORWARD:
        db.psql("-f", str(path))
    for path in ROLLBACK:
        for _ in range(2):
            if mode == "file":
                db.psql("-f", str(path))
            else:
                db.psql(stdin=path.read_bytes())
    assert bridge_tables(db.connect()) == []


def test_method_1_backslash_i_from_the_project_root(db):
    script = "".join(f"\\i migrations/{p.name}\n" for p in FORWARD)
    db.psql(stdin=script.encode())
    assert sorted(bridge_tables(db.connect())) == sorted(
        [
            "bridge_states",
            "fsm_transitions",
            "metadata_stamps",
            "node_registrations",
            "workflow_executions",
            "workflow_steps",
        ]
    )


def _seed_shell(db, script: str) -> subprocess.CompletedProcess:
    """Run one of the seed's shell loops as written, with libpq's variables pointing at `db`."""
    params = psycopg2.extensions.parse_dsn(db.dsn)
    env = {
        **os.environ,
        "PGHOST": params.get("host", ""),
        "PGPORT": str(params.get("port", "5432")),
        "PGUSER": params.get("user", ""),
        "PGDATABASE": db.name,
    }
    script = script.replace("-h localhost -U postgres -d omninode_bridge", "-X -v ON_ERROR_STOP=1")
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)


METHOD_2 = """
for migration in migrations/00*.sql; do
    if [[ ! $migration =~ rollback ]]; then
        echo "Running: $migration"
        psql -h localhost -U postgres -d omninode_bridge -f "$migration"
    fi
done
"""
SCRIPT_ROLLBACK = """
for migration in $(ls -r migrations/*_rollback_*.sql); do
    echo "Rolling back: $migration"
    psql -h localhost -U postgres -d omninode_bridge -f "$migration"
done
"""


def test_seed_shell_loops_apply_and_roll_back(db):
    out = _seed_shell(db, METHOD_2)
    assert out.stdout.count("Running:") == HEAD
    assert len(bridge_tables(db.connect())) == 6
    out = _seed_shell(db, SCRIPT_ROLLBACK)
    assert out.stdout.count("Rolling back:") == HEAD
    assert bridge_tables(db.connect()) == []


def test_a_database_built_by_the_psql_loop_is_adopted(db, migrations):
    _seed_shell(db, METHOD_2)
    before = _snap(db)
    result = engine.migrate(db.target(), discover_migrations(MIGRATIONS))
    assert [s.version for s in result.steps] == SHIPPED
    assert all(s.already_existed > 0 for s in result.steps)  # every table was found, none rebuilt
    assert _snap(db) == before
    assert inspection.verify(db.target(), migrations).ok
    assert inspection.status(db.target(), migrations).pending == 0
