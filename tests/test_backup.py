"""Backups, verification, retention and restore against real PostgreSQL and real pg_dump/pg_restore."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from bridge_db import backup, engine, pgbuilds, pgtools
from bridge_db.errors import BackupFailed, PrerequisiteMissing

from conftest import HEAD, ROOT, drop_database, run_cli

SECRET = "Backup-s3cret-pw"


def _fill(db, rows: int = 50) -> None:
    db.query(
        "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, namespace, metadata) "
        "SELECT uuid_generate_v4(), 'stamping', 'PROCESSING', 'ns' || (g %% 3), jsonb_build_object('n', g) "
        "FROM generate_series(1, %s) g",
        (rows,),
    )
    db.query(
        "INSERT INTO workflow_steps (workflow_id, step_name, step_order) SELECT id, 'hash', 0 FROM workflow_executions"
    )


@pytest.fixture
def filled(db, migrations):
    engine.migrate(db.target(), migrations)
    _fill(db)
    return db


def _server_major(db) -> int:
    return db.query("SELECT current_setting('server_version_num')::int / 10000")[0][0]


def _fake_bindir(tmp_path, db, dump_version: int | None = None, fail_with: str | None = None) -> Path:
    """A BRIDGE_PG_BINDIR whose pg_dump reports `dump_version` and fails with `fail_with`; the other
    tools are the real ones."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    real = pgtools.restore_tool(_server_major(db), _server_major(db)).path.parent
    for tool in ("pg_restore", "pg_dumpall"):
        (bindir / tool).symlink_to(real / tool)
    version = dump_version or _server_major(db)
    script = bindir / "pg_dump"
    body = f'echo "{fail_with}" >&2; exit 1' if fail_with else f'exec {real / "pg_dump"} "$@"'
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) {version}.0"; exit 0; fi\n'
        # a failing pg_dump may have started writing its file: leave a half-written one behind
        'for a in "$@"; do case "$a" in --file=*) echo partial > "${a#--file=}";; esac; done\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return bindir


def test_backup_writes_a_private_verified_dump_and_manifest(filled, tmp_path):
    folder = tmp_path / "backups"
    result = backup.take_backup(filled.target(), folder, verify_restore=True)
    dump = Path(result.path)
    assert dump.parent == folder and dump.suffix == ".dump"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    manifest_path = dump.with_name(dump.name + ".manifest.json")
    assert stat.S_IMODE(manifest_path.stat().st_mode) == 0o600
    manifest = json.loads(manifest_path.read_text())
    for key in (
        "database",
        "server_version",
        "pg_dump_version",
        "migration_head",
        "size_bytes",
        "sha256",
        "duration_s",
        "started_at",
        "finished_at",
    ):
        assert manifest[key] not in (None, ""), key
    assert manifest["database"] == filled.name and manifest["migration_head"] == HEAD
    assert manifest["size_bytes"] == dump.stat().st_size
    assert manifest["row_counts"]["workflow_executions"] == 50 and manifest["row_counts"]["workflow_steps"] == 50
    assert manifest["verification"]["listed"] and manifest["verification"]["restored"]
    assert [p.name for p in folder.iterdir() if p.name.endswith(".partial")] == []
    # the scratch database is gone (this process's only: other workers may be verifying meanwhile)
    assert filled.query(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'bridge_verify_%%' "
        "AND shobj_description(oid, 'pg_database') LIKE %s",
        (f"%by pid {os.getpid()} %",),
    ) == [(0,)]


def test_directory_format_with_jobs_and_globals(filled, tmp_path):
    result = backup.take_backup(
        filled.target(), tmp_path / "b", fmt="directory", jobs=2, with_globals=True, verify_restore=True
    )
    dump = Path(result.path)
    assert dump.is_dir() and (dump / "toc.dat").is_file()
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in dump.iterdir())
    globals_file = dump.with_name(result.manifest.globals_file)
    text = globals_file.read_text()
    assert "CREATE ROLE" in text and "SCRAM-SHA-256$" not in text and "md5" not in text
    assert stat.S_IMODE(globals_file.stat().st_mode) == 0o600


def test_backup_then_restore_into_a_new_database_compares_rows(filled, tmp_path):
    folder = tmp_path / "backups"
    out = run_cli("backup", "--dsn", filled.dsn, "--backup-dir", str(folder), "--verify-restore", "--json")
    assert out.returncode == 0, out.stderr
    dump = json.loads(out.stdout)["path"]
    out = run_cli("restore", "--dsn", filled.dsn, "--file", dump, "--json")
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)
    assert restored["database"].startswith(filled.name + "_restore_") and restored["row_counts_checked"]
    try:
        conn = psycopg2.connect(filled.dsn.replace(f"dbname={filled.name}", f"dbname={restored['database']}"))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM workflow_steps")
            assert cur.fetchone()[0] == 50
            cur.execute("SELECT max(version) FROM schema_migrations")
            assert cur.fetchone()[0] == HEAD
        conn.close()
    finally:
        drop_database(filled.admin_dsn, restored["database"])


def test_restore_refuses_a_damaged_file(filled, tmp_path):
    result = backup.take_backup(filled.target(), tmp_path / "b")
    with open(result.path, "ab") as handle:
        handle.write(b"\0")
    out = run_cli("restore", "--dsn", filled.dsn, "--file", result.path)
    assert out.returncode == 8 and "does not match the manifest" in out.stderr
    assert filled.query("SELECT count(*) FROM pg_database WHERE datname LIKE %s", (filled.name + "_restore_%",)) == [
        (0,)
    ]


def test_restore_over_the_environment_database_needs_flag_and_confirmation(filled, tmp_path):
    result = backup.take_backup(filled.target(), tmp_path / "b", verify_restore=True)
    filled.query("DELETE FROM workflow_steps")  # the damage a restore should undo
    base = ["restore", "--dsn", filled.dsn, "--file", result.path, "--target-db", filled.name]
    out = run_cli(*base)
    assert out.returncode == 9 and "--overwrite" in out.stderr
    out = run_cli(*base, "--overwrite")  # no terminal, no --yes
    assert out.returncode == 9 and "--yes" in out.stderr
    assert filled.query("SELECT count(*) FROM workflow_steps") == [(0,)]  # untouched so far
    out = run_cli(*base, "--overwrite", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    kept = json.loads(out.stdout)["replaced"]
    try:
        assert filled.query("SELECT count(*) FROM workflow_steps") == [(50,)]
        assert filled.query("SELECT count(*) FROM pg_database WHERE datname = %s", (kept,)) == [(1,)]
    finally:
        drop_database(filled.admin_dsn, kept)


def test_too_old_pg_dump_is_a_clear_error_and_writes_nothing(filled, tmp_path, monkeypatch):
    """The only pg_dump on the machine is older than the server: exit 7, naming the package."""
    monkeypatch.setenv("BRIDGE_PG_BINDIR", str(_fake_bindir(tmp_path, filled, dump_version=9)))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv(pgbuilds.CACHE_ENV, str(tmp_path / "no-builds"))
    monkeypatch.setattr(pgtools.glob, "glob", lambda pattern: [])  # no /usr/lib/postgresql/*/bin
    folder = tmp_path / "backups"
    major = _server_major(filled)
    with pytest.raises(PrerequisiteMissing, match=f"no pg_dump of PostgreSQL {major} or newer") as failure:
        backup.take_backup(filled.target(), folder)
    assert failure.value.exit_code == 7 and f"postgresql-client-{major}" in failure.value.next_step
    assert [p.name for p in folder.iterdir() if p.name != ".lock"] == []


def test_failed_backup_leaves_no_file_and_earlier_backups_untouched(filled, tmp_path, monkeypatch):
    folder = tmp_path / "backups"
    good = backup.take_backup(filled.target(), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    monkeypatch.setenv("BRIDGE_PG_BINDIR", str(_fake_bindir(tmp_path, filled, fail_with="No space left on device")))
    with pytest.raises(BackupFailed, match="No space left on device"):
        backup.take_backup(filled.target(), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert [e.path for e in backup.list_backups(folder)] == [good.path]


def test_password_never_in_a_process_listing_manifest_or_output(filled, tmp_path):
    """A DSN with a password: pg_dump gets it through its environment, never its argv."""
    folder = tmp_path / "backups"
    dsn = f"{filled.dsn} password={SECRET}"
    holder = filled.connect()
    holder.autocommit = False
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE workflow_steps IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge_db", "backup", "--dsn", dsn, "--backup-dir", str(folder), "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_pg_dump = 0
    leaked = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen_pg_dump < 20:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "pg_dump" in argv and "--snapshot" in argv:
                seen_pg_dump += 1
                if SECRET in argv:
                    leaked.append(argv)
            elif SECRET in argv and int(pid) != proc.pid:
                leaked.append(argv)
        time.sleep(0.05)
    holder.rollback()
    holder.close()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert seen_pg_dump >= 20, "pg_dump was never observed running"
    assert leaked == []
    assert SECRET not in stdout + stderr
    for path in folder.iterdir():
        if path.is_file() and path.name.endswith(".json"):
            assert SECRET not in path.read_text()


def _fake_backup(folder: Path, when: datetime, verified: bool = True) -> Path:
    name = f"db-{when.strftime(backup.STAMP)}.dump"
    path = folder / name
    path.write_bytes(b"x")
    manifest = backup.BackupManifest(
        file=name,
        environment="test",
        database="db",
        format="custom",
        server_version="15",
        pg_dump_version="15",
        migration_head=6,
        size_bytes=1,
        sha256="0" * 64,
        started_at=when.isoformat(),
        finished_at=when.isoformat(),
        duration_s=1.0,
        verification={"listed": verified, "restored": None},
    )
    backup._write_manifest(path, manifest)
    return path


def test_retention_keeps_last_daily_weekly_and_the_newest_verified(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    paths = {}
    for days in range(0, 60):
        for hour in (1, 13):
            when = now - timedelta(days=days, hours=hour)
            paths[when] = _fake_backup(folder, when, verified=False)
    old_verified = _fake_backup(folder, now - timedelta(days=90), verified=True)
    keep, delete = backup.plan_retention(backup.list_backups(folder), keep_last=3, keep_daily=7, keep_weekly=4, now=now)
    kept = {Path(e.path) for e in keep}
    newest = sorted(paths)[-3:]
    assert {paths[w] for w in newest} <= kept  # the last three
    for days in range(0, 7):  # one per day for a week: the newest of that day
        day = (now - timedelta(days=days)).date()
        todays = [w for w in paths if w.date() == day]
        if todays:
            assert paths[max(todays)] in kept
    assert old_verified in kept  # the only verified backup survives any window
    assert len(kept) < 20 and len(delete) == len(paths) + 1 - len(kept)


def test_prune_deletes_files_and_manifests_and_dry_run_does_not(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    now = datetime.now(UTC)
    for days in range(10):
        _fake_backup(folder, now - timedelta(days=days * 8))

    def files():
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    before = files()
    would = backup.prune(folder, keep_last=2, keep_daily=1, keep_weekly=1, dry_run=True)
    assert would and files() == before
    deleted = backup.prune(folder, keep_last=2, keep_daily=1, keep_weekly=1)
    assert deleted == would
    for path in deleted:
        assert not Path(path).exists() and not Path(path + ".manifest.json").exists()
    assert len(backup.list_backups(folder)) == 2


def test_backups_listing_shows_state_and_hides_partials(filled, tmp_path):
    folder = tmp_path / "b"
    backup.take_backup(filled.target(), folder)
    (folder / ".stale.dump.partial").write_bytes(b"half")
    (folder / "orphan.dump").write_bytes(b"no manifest")
    out = run_cli("backups", "--dsn", filled.dsn, "--backup-dir", str(folder), "--json")
    listing = json.loads(out.stdout)["backups"]
    assert sorted(e["state"] for e in listing) == ["listed", "no-manifest"]
    assert not any("partial" in e["path"] for e in listing)
    ours = folder / f".{filled.name}-20260101T000000Z.dump.partial"  # what a killed backup leaves
    ours.write_bytes(b"half")
    backup.take_backup(filled.target(), folder)  # the next backup removes its own stale partial ...
    assert not ours.exists()
    assert (folder / ".stale.dump.partial").exists()  # ... and never another program's
