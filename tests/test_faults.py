"""Faults: the runner killed at every statement boundary, killed during a backup, the server stopped
with -m immediate, the connection dropped, the disk full. Afterwards: no partial schema, no false
history row, no half-written backup presented as good; the next run completes."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bridge_db import backup, engine
from bridge_db.discovery import discover_migrations
from bridge_db.embedded import EmbeddedCluster, find_server_binaries

from conftest import ROOT, Database, run_cli


def _migration_pausing_at(boundary: int) -> str:
    """Three statements with a marker after each; the runner pauses (30 s) only at `boundary`."""
    pause = {k: 30 if k == boundary else 0 for k in (1, 2, 3)}
    return (
        "-- Migration 007: several statements, to be killed at each boundary between them\n"
        "CREATE TABLE IF NOT EXISTS fault_a (id int);\n"
        f"SELECT pg_sleep({pause[1]}) /* boundary 1 */;\n"
        "CREATE TABLE IF NOT EXISTS fault_b (id int);\n"
        f"SELECT pg_sleep({pause[2]}) /* boundary 2 */;\n"
        "CREATE INDEX IF NOT EXISTS idx_fault_b ON fault_b (id);\n"
        f"SELECT pg_sleep({pause[3]}) /* boundary 3 */;\n"
    )


SLOW = _migration_pausing_at(1)


def _slow_migration(folder: Path, boundary: int = 1) -> None:
    (folder / "007_create_fault_tables.sql").write_text(_migration_pausing_at(boundary))
    (folder / "007_rollback_fault_tables.sql").write_text(
        "DROP TABLE IF EXISTS fault_b;\nDROP TABLE IF EXISTS fault_a;\n"
    )


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge_db", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for_query(db, needle: str, timeout: float = 30) -> int:
    """The pid of the backend running a query that contains `needle`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE %s "
            "AND pid <> pg_backend_pid()",
            (f"%{needle}%",),
        )
        if rows:
            return rows[0][0]
        time.sleep(0.05)
    raise AssertionError(f"no query with {needle!r} appeared")


def _wait_until_gone(db, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not db.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)):
            return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} outlived its client")


def _state(db) -> tuple:
    tables = {r[0] for r in db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    history = [r[0] for r in db.query("SELECT version FROM schema_migrations ORDER BY 1")]
    ok_logs = db.query("SELECT count(*) FROM schema_migrations_log WHERE version = 7 AND success")[0][0]
    return tables, history, ok_logs


@pytest.mark.parametrize("boundary", [1, 2, 3])
def test_sigkill_at_each_statement_boundary_leaves_nothing_and_the_rerun_completes(db, migrations_copy, boundary):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _slow_migration(migrations_copy, boundary)
    runner = _start(["migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy)])
    backend = _wait_for_query(db, f"pg_sleep(30) /* boundary {boundary} */")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    db.query("SELECT pg_cancel_backend(%s)", (backend,))  # what the server does once it notices the client is gone
    _wait_until_gone(db, backend)
    tables, history, ok_logs = _state(db)
    assert "fault_a" not in tables and "fault_b" not in tables  # no partial schema
    assert history == [1, 2, 3, 4, 5, 6] and ok_logs == 0  # no false history row
    assert db.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ) == [(0,)]
    (migrations_copy / "007_create_fault_tables.sql").write_text(SLOW.replace("pg_sleep(30)", "pg_sleep(0)"))
    # the file changed before it was ever applied: allowed; the rerun completes
    out = run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0, out.stderr
    assert _state(db)[1] == [1, 2, 3, 4, 5, 6, 7]


def test_sigkill_during_a_no_transaction_statement_and_the_rerun_does_not_repeat_it(db, migrations_copy):
    """The runner dies while CREATE INDEX CONCURRENTLY runs; the server finishes the build, but no
    progress row says so. The rerun must find the index built instead of failing on it (a291768 ran
    the statement again: 'relation already exists', and duplicated rows for an INSERT)."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query(
        "CREATE FUNCTION slow_ident(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE "
        "AS $$BEGIN PERFORM pg_sleep(0.4); RETURN x; END$$"
    )
    db.query("CREATE TABLE kill_target (id int)")
    db.query("INSERT INTO kill_target VALUES (1), (2)")
    (migrations_copy / "007_index_kill_target.sql").write_text(
        "-- bridge:no-transaction\n"
        "CREATE INDEX CONCURRENTLY kill_a ON kill_target (id);\n"
        "CREATE INDEX CONCURRENTLY kill_b ON kill_target (slow_ident(id));\n"
        "CREATE INDEX CONCURRENTLY kill_c ON kill_target ((id + 1));\n"
    )
    (migrations_copy / "007_rollback_index_kill_target.sql").write_text(
        "-- bridge:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS kill_c;\n"
        "DROP INDEX CONCURRENTLY IF EXISTS kill_b;\nDROP INDEX CONCURRENTLY IF EXISTS kill_a;\n"
    )
    runner = _start(["migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy)])
    backend = _wait_for_query(db, "CREATE INDEX CONCURRENTLY kill_b")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    _wait_until_gone(db, backend)  # the server completes the statement, then notices the client is gone
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'kill_b'::regclass") == [(True,)]
    assert db.query("SELECT statement_index FROM schema_migrations_progress WHERE version = 7") == [(0,)]
    out = run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0, out.stderr
    assert _state(db)[1] == [1, 2, 3, 4, 5, 6, 7]
    assert db.query("SELECT count(*) FROM pg_indexes WHERE tablename = 'kill_target'") == [(3,)]
    assert db.query("SELECT count(*) FROM schema_migrations_progress") == [(0,)]


def test_dropped_connection_is_exit_3_and_the_rerun_completes(db, migrations_copy):
    _slow_migration(migrations_copy, 2)
    runner = _start(["migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy)])
    backend = _wait_for_query(db, "pg_sleep(30) /* boundary 2 */")
    db.query("SELECT pg_terminate_backend(%s)", (backend,))
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 3, err
    assert "lost the connection" in err and "next:" in err
    tables, history, ok_logs = _state(db)
    assert "fault_a" not in tables and history == [1, 2, 3, 4, 5, 6] and ok_logs == 0
    (migrations_copy / "007_create_fault_tables.sql").write_text(SLOW.replace("pg_sleep(30)", "pg_sleep(0)"))
    assert run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy)).returncode == 0


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, because the test stops it hard."""
    base = Path(tempfile.mkdtemp(prefix="bridge-fault-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    cluster = EmbeddedCluster(base / "cluster", port=55700 + worker)
    cluster.up(database="faults")
    params = cluster.connection_params()
    yield cluster, f"host={params['host']} port={params['port']} user={params['user']} dbname=faults"
    cluster.down()
    shutil.rmtree(base, ignore_errors=True)


def test_server_stopped_with_immediate_mid_migration(own_cluster, migrations_copy):
    cluster, dsn = own_cluster
    db = Database("faults", dsn, admin_dsn=dsn)  # the cluster is this test's own
    _slow_migration(migrations_copy)
    runner = _start(["migrate", "--dsn", dsn, "--migrations-dir", str(migrations_copy)])
    _wait_for_query(db, "pg_sleep(30) /* boundary 1 */")
    cluster._pg(
        find_server_binaries(cluster.data_dir), "pg_ctl", "-D", str(cluster.data_dir), "-m", "immediate", "-w", "stop"
    )
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 3, err
    assert "next:" in err
    cluster.up(database="faults")  # crash recovery
    tables, history, ok_logs = _state(db)
    assert "fault_a" not in tables and history == [1, 2, 3, 4, 5, 6] and ok_logs == 0
    (migrations_copy / "007_create_fault_tables.sql").write_text(SLOW.replace("pg_sleep(30)", "pg_sleep(0)"))
    out = run_cli("migrate", "--dsn", dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0, out.stderr
    assert _state(db)[1] == [1, 2, 3, 4, 5, 6, 7]


def _fill(db, rows: int = 20000) -> None:
    db.query(
        "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, namespace, metadata) "
        "SELECT uuid_generate_v4(), 'stamping', 'PROCESSING', 'ns', jsonb_build_object('payload', md5(g::text)) "
        "FROM generate_series(1, %s) g",
        (rows,),
    )


def test_sigkill_during_a_backup_leaves_no_backup_presented_as_good(db, migrations, tmp_path):
    engine.migrate(db.target(), migrations)
    _fill(db, 2000)
    folder = tmp_path / "backups"
    holder = db.connect()
    holder.autocommit = False
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE workflow_steps IN ACCESS EXCLUSIVE MODE")  # holds pg_dump mid-run
    runner = _start(["backup", "--dsn", db.dsn, "--backup-dir", str(folder)], start_new_session=True)
    _wait_for_query(db, "LOCK TABLE public.workflow_steps")  # pg_dump is locking its tables now
    os.killpg(runner.pid, signal.SIGKILL)  # the CLI and its pg_dump
    runner.wait(timeout=30)
    holder.rollback()
    holder.close()
    assert backup.list_backups(folder) == []  # nothing presented as a backup
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    result = backup.take_backup(db.target(), folder)  # the next one completes and removes the leftovers
    assert [e.path for e in backup.list_backups(folder)] == [result.path]
    assert not list(folder.glob("*.partial"))


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_a_backup_fails_cleanly(db, migrations, tmp_path):
    engine.migrate(db.target(), migrations)
    _fill(db)
    folder = tmp_path / "backups"
    folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bridge_db", "backup", "--dsn", db.dsn, "--backup-dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(64 * 1024),
    )
    assert proc.returncode == 8, proc.stderr
    assert "pg_dump failed" in proc.stderr and "SIGXFSZ" in proc.stderr
    assert [p.name for p in folder.iterdir() if p.name != ".lock"] == []


def test_full_disk_stops_a_production_migrate_before_any_ddl(db, tmp_path):
    _fill_db = db  # a database with data, so that the dump is larger than the limit
    engine.migrate(db.target(), discover_migrations(ROOT / "migrations"), to_version=1)
    _fill(_fill_db)
    config = tmp_path / "environments.toml"
    config.write_text(
        f'[defaults]\nmigrations_dir = "{ROOT / "migrations"}"\n[environments.production]\n'
        f'database = "{db.name}"\nbackup_before_migrate = true\nsingle_transaction = true\n'
        f'backup_dir = "{tmp_path / "backups"}"\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge_db",
            "migrate",
            "--config",
            str(config),
            "--env",
            "production",
            "--dsn",
            db.dsn,
            "--yes",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(64 * 1024),
    )
    assert proc.returncode == 8, proc.stderr
    assert db.query("SELECT max(version) FROM schema_migrations") == [(1,)]
    assert db.query("SELECT to_regclass('workflow_steps')") == [(None,)]
