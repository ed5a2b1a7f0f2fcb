"""Extensions, roles and grants, and monitoring: the effect on real PostgreSQL, not the statements."""

from __future__ import annotations

import json
import uuid

import psycopg2
import pytest

from bridge_db import engine, inspection
from bridge_db.discovery import discover_migrations
from bridge_db.errors import PrerequisiteMissing, UsageError
from bridge_db.extensions import setup_extensions
from bridge_db.monitoring import collect_stats
from bridge_db.privileges import declared_roles, reconcile_privileges

from conftest import HEAD, create_database, make_target, run_cli


def test_setup_extensions_is_idempotent_and_check_changes_nothing(bare_db):
    target = bare_db.target()
    report = setup_extensions(target, ("uuid-ossp", "pg_stat_statements"), check=True)
    assert report.missing == ["uuid-ossp", "pg_stat_statements"] and not report.changed
    assert bare_db.query("SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'") == [(0,)]
    report = setup_extensions(target, ("uuid-ossp", "pg_stat_statements"))
    assert report.created == ["uuid-ossp", "pg_stat_statements"]
    report = setup_extensions(target, ("uuid-ossp", "pg_stat_statements"))
    assert report.created == [] and report.present == ["uuid-ossp", "pg_stat_statements"]


def test_setup_extensions_reports_a_missing_preload(plain_server):
    bare = create_database(plain_server, with_extensions=())
    out = run_cli("setup-extensions", "--dsn", bare.dsn, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["created"] == ["uuid-ossp", "pg_stat_statements"]
    assert report["not_preloaded"] == ["pg_stat_statements"]
    assert "shared_preload_libraries" in report["hints"][0]


def test_setup_extensions_on_a_preloading_server_reports_nothing_missing(preloading_server):
    bare = create_database(preloading_server, with_extensions=())
    out = run_cli("setup-extensions", "--dsn", bare.dsn, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["not_preloaded"] == [] and report["hints"] == []


def test_unknown_extension_is_a_prerequisite_error_and_creates_nothing(bare_db):
    with pytest.raises(PrerequisiteMissing, match="not available on the server: no_such_extension_xyz"):
        setup_extensions(bare_db.target(), ("uuid-ossp", "no_such_extension_xyz"))
    assert bare_db.query("SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'") == [(0,)]


def test_seed_setup_script_creates_the_extensions(bare_db):
    import os
    import subprocess

    from conftest import ROOT

    params = psycopg2.extensions.parse_dsn(bare_db.dsn)
    env = {
        **os.environ,
        "PGHOST": params.get("host", ""),
        "PGPORT": str(params.get("port", 5432)),
        "PGUSER": params.get("user", ""),
        "PGDATABASE": bare_db.name,
    }
    out = subprocess.run(
        ["bash", "deployment/scripts/setup_postgres_extensions.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert {r[0] for r in bare_db.query("SELECT extname FROM pg_extension")} >= {"uuid-ossp", "pg_stat_statements"}


@pytest.fixture
def roles(db):
    suffix = uuid.uuid4().hex[:8]
    names = {"app_role": f"bridge_app_{suffix}", "readonly_role": f"bridge_ro_{suffix}"}
    yield names
    for role in names.values():
        db.query(f"DROP OWNED BY {role}")
        db.query(f"DROP ROLE IF EXISTS {role}")


def _as_role(db, role: str):
    conn = psycopg2.connect(db.dsn + f" options='-c role={role}'")
    conn.autocommit = True
    return conn


def _can(conn, statement: str) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
        return True
    except psycopg2.errors.InsufficientPrivilege:
        return False


def test_grants_take_effect_and_cover_later_migrations(db, roles, migrations_copy):
    target = db.target(**roles)
    engine.migrate(target, discover_migrations(migrations_copy))
    report = reconcile_privileges(target, declared_roles(target))
    assert report.changed

    readonly = _as_role(db, roles["readonly_role"])
    app = _as_role(db, roles["app_role"])
    insert = (
        "INSERT INTO node_registrations (node_id, node_type, node_version) "
        "VALUES ('n-" + uuid.uuid4().hex[:6] + "', 'reducer', '1.0')"
    )
    assert _can(readonly, "SELECT count(*) FROM node_registrations")
    assert not _can(readonly, insert)
    assert not _can(readonly, "DELETE FROM workflow_executions")
    assert _can(app, insert)
    assert _can(app, "UPDATE node_registrations SET health_status = 'healthy'")
    assert not _can(app, "CREATE TABLE app_made (id int)")
    assert not _can(app, "DROP TABLE node_registrations")
    assert not _can(app, "TRUNCATE node_registrations")
    assert not _can(app, "DELETE FROM schema_migrations")  # history belongs to migrations
    assert _can(app, "SELECT max(version) FROM schema_migrations")

    # A table added by a new migration is readable by both without granting again.
    (migrations_copy / "007_create_audit_notes.sql").write_text(
        "CREATE TABLE IF NOT EXISTS audit_notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);\n"
    )
    (migrations_copy / "007_rollback_audit_notes.sql").write_text("DROP TABLE IF EXISTS audit_notes;\n")
    engine.migrate(target, discover_migrations(migrations_copy))
    assert _can(readonly, "SELECT * FROM audit_notes")
    assert _can(app, "INSERT INTO audit_notes (note) VALUES ('hello')")
    assert not _can(readonly, "INSERT INTO audit_notes (note) VALUES ('no')")
    readonly.close()
    app.close()


def test_grant_is_idempotent_and_check_changes_nothing(db, roles):
    target = db.target(**roles)
    engine.migrate(target, discover_migrations(__import__("conftest").MIGRATIONS))
    acl_before = db.query(
        "SELECT relname, relacl::text FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
    )
    out = run_cli(
        "grant", "--dsn", db.dsn, "--check", "--json", env={"BRIDGE_DB_CONFIG": _config_with_roles(db, roles)}
    )
    assert out.returncode == 0, out.stderr
    planned = json.loads(out.stdout)
    assert planned["changed"] and planned["check_only"]
    assert any("GRANT SELECT ON TABLE" in c["statement"] for c in planned["changes"])
    assert (
        db.query("SELECT relname, relacl::text FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1")
        == acl_before
    )
    assert db.query("SELECT count(*) FROM pg_roles WHERE rolname = %s", (roles["app_role"],)) == [(0,)]

    first = reconcile_privileges(target, declared_roles(target))
    second = reconcile_privileges(target, declared_roles(target))
    assert first.changed and not second.changed

    db.query(f"GRANT TRUNCATE ON workflow_steps TO {roles['app_role']}")  # drift
    third = reconcile_privileges(target, declared_roles(target), check=True)
    assert [c.statement for c in third.changes] == [
        f'REVOKE TRUNCATE ON TABLE "public"."workflow_steps" FROM "{roles["app_role"]}"'
    ]


def _config_with_roles(db, roles) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    handle.write(
        f'[environments.dev]\ndatabase = "{db.name}"\napp_role = "{roles["app_role"]}"\n'
        f'readonly_role = "{roles["readonly_role"]}"\n'
    )
    handle.close()
    return handle.name


@pytest.mark.parametrize("name", ['app"; DROP TABLE x; --', "Robert'); --", "UPPER", "a-b", ""])
def test_invalid_role_names_are_refused(db, name):
    with pytest.raises(UsageError):
        declared_roles(make_target(db.dsn, app_role=name) if name else db.target(app_role=name))


def test_stats_tables_indexes_and_queries(db, migrations):
    engine.migrate(db.target(), migrations)
    db.query("INSERT INTO node_registrations (node_id, node_type, node_version) VALUES ('n1', 'reducer', '1')")
    db.query("ANALYZE node_registrations")
    report = collect_stats(db.target())
    tables = {t["table"]: t for t in report.tables}
    assert tables["node_registrations"]["row_count"] == 1
    assert any(i["index"] == "idx_node_registrations_health_status" for i in report.indexes)
    assert report.queries is None and "not installed" in report.notes[0]  # the fixture has no pg_stat_statements
    out = run_cli("stats", "--dsn", db.dsn, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["tables"]


def test_stats_without_the_preload_says_so(plain_server):
    db = create_database(plain_server, with_extensions=("uuid-ossp", "pg_stat_statements"))
    report = collect_stats(db.target())
    assert report.queries is None and "shared_preload_libraries" in report.notes[0]


def test_stats_with_pg_stat_statements_on_the_embedded_cluster_style_server(preloading_server, migrations):
    """With the extension installed the seed's query works, with the column names this server has."""
    db = create_database(preloading_server, with_extensions=("uuid-ossp", "pg_stat_statements"))
    engine.migrate(db.target(), migrations)
    report = collect_stats(db.target(), top=5)
    assert report.queries is not None and 0 < len(report.queries) <= 5
    assert {"query", "calls", "mean_ms", "max_ms", "total_ms"} <= set(report.queries[0])


def test_the_migration_user_needs_no_superuser(db, migrations):
    """Extensions come from the admin; the migrator only needs CONNECT and CREATE on schema public."""
    migrator = f"bridge_migrator_{uuid.uuid4().hex[:8]}"
    db.query(f"CREATE ROLE {migrator} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    db.query(f"GRANT CONNECT ON DATABASE {db.name} TO {migrator}")
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {migrator}")
    try:
        target = make_target(db.dsn + f" options='-c role={migrator}'")
        assert engine.migrate(target, migrations).head_after == HEAD
        assert db.query("SELECT DISTINCT applied_by FROM schema_migrations") == [(migrator,)]
        assert db.query("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (migrator,)) == [(False,)]
        assert inspection.verify(target, migrations).ok
        assert engine.rollback(target, migrations, to_version=0).head_after is None
    finally:
        db.query(f"DROP OWNED BY {migrator}")
        db.query(f"DROP ROLE {migrator}")
