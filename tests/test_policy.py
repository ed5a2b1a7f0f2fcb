"""Environment policies: production's guarded migrate, staging's run logs, confirmation rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge_db import backup, engine
from bridge_db.discovery import discover_migrations
from bridge_db.errors import BackupFailed
from test_backup import _fake_bindir

from catalog import bridge_tables
from conftest import HEAD, MIGRATIONS, make_target, run_cli

SECRET = "Policy-s3cret-pw"


@pytest.fixture
def prod_config(tmp_path, db) -> Path:
    """A production environment with the shipped policy, its backups and logs under tmp_path."""
    config = tmp_path / "environments.toml"
    config.write_text(
        f"""
[defaults]
migrations_dir = "{MIGRATIONS}"

[environments.production]
database = "{db.name}"
single_transaction = true
require_confirmation = true
backup_before_migrate = true
backup_dir = "{tmp_path / "backups"}"
log_dir = "{tmp_path / "logs"}"

[environments.staging]
database = "{db.name}"
log_dir = "{tmp_path / "logs"}"
"""
    )
    return config


def _prod(config: Path, db, *args: str, env: dict | None = None):
    return run_cli(*args, "--config", str(config), "--env", "production", "--dsn", db.dsn, env=env)


def _backups(tmp_path) -> list[str]:
    folder = tmp_path / "backups"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_production_migrate_refuses_without_a_terminal_or_yes(prod_config, db, tmp_path):
    out = _prod(prod_config, db, "migrate")
    assert out.returncode == 9 and "--yes" in out.stderr
    assert bridge_tables(db.connect()) == []
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]
    assert _backups(tmp_path) == []


def test_production_migrate_backs_up_first_and_records_it(prod_config, db, tmp_path):
    out = _prod(prod_config, db, "migrate", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["single_transaction"] is True and result["backup"]
    assert len(result["steps"]) == HEAD
    dump = Path(result["backup"])
    assert dump.is_file() and backup.read_manifest(dump).verified == "listed"
    assert backup.read_manifest(dump).migration_head is None  # taken before anything was applied
    logged = db.query("SELECT DISTINCT details->>'backup' FROM schema_migrations_log")
    assert logged == [(str(dump),)]
    # the next run has nothing to do: no confirmation asked, no backup taken
    out = _prod(prod_config, db, "migrate")
    assert out.returncode == 0 and "nothing to apply" in out.stdout
    assert len(_backups(tmp_path)) == 2  # one dump + its manifest


def test_failed_backup_stops_production_migrate_before_any_ddl(prod_config, db, tmp_path):
    fake = _fake_bindir(tmp_path, db, fail_with="pg_dump: error: could not write: No space left on device")
    out = _prod(prod_config, db, "migrate", "--yes", env={"BRIDGE_PG_BINDIR": str(fake)})
    assert out.returncode == 8, out.stderr
    assert "No space left on device" in out.stderr
    assert bridge_tables(db.connect()) == []
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]
    assert _backups(tmp_path) == []  # and no partial file either
    assert [p.name for p in (tmp_path / "backups").iterdir() if p.name.endswith(".partial")] == []


def test_not_enough_disk_for_the_backup_stops_before_anything(db, tmp_path, monkeypatch, migrations):
    target = make_target(db.dsn, backup_before_migrate=True, single_transaction=True)
    monkeypatch.setattr(backup.shutil, "disk_usage", lambda path: type("U", (), {"free": 1024})())
    with pytest.raises(BackupFailed, match="not enough free space"):
        engine.migrate(target, migrations, backup_dir=tmp_path / "b")
    assert bridge_tables(db.connect()) == []
    assert list((tmp_path / "b").iterdir()) == []


def test_post_apply_schema_check_rolls_back_everything(db, tmp_path, migrations_copy):
    # The database already holds a table a new migration declares, without the column it declares:
    # IF NOT EXISTS skips it silently, and only the check before COMMIT notices.
    db.query("CREATE TABLE legacy_notes (id int)")
    (migrations_copy / "007_create_legacy_notes.sql").write_text(
        "CREATE TABLE IF NOT EXISTS legacy_notes (id int, body text);\n"
    )
    (migrations_copy / "007_rollback_legacy_notes.sql").write_text("DROP TABLE IF EXISTS legacy_notes;\n")
    target = make_target(db.dsn, backup_before_migrate=True)
    with pytest.raises(Exception) as failure:
        engine.migrate(target, discover_migrations(migrations_copy), backup_dir=tmp_path / "b")
    assert failure.value.exit_code == 6
    assert "legacy_notes.body is missing" in failure.value.message
    assert bridge_tables(db.connect()) == ["legacy_notes"]  # 001..006 rolled back with it
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]


def test_production_rollback_asks_and_backs_up(prod_config, db, tmp_path):
    assert _prod(prod_config, db, "migrate", "--yes").returncode == 0
    out = _prod(prod_config, db, "rollback", "--steps", "1")
    assert out.returncode == 9
    out = _prod(prod_config, db, "rollback", "--steps", "1", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["backup"]
    assert db.query("SELECT max(version) FROM schema_migrations") == [(HEAD - 1,)]


def test_staging_runs_write_a_timestamped_log_without_secrets(prod_config, db, tmp_path):
    dsn = f"{db.dsn} password={SECRET}"
    out = run_cli("migrate", "--config", str(prod_config), "--env", "staging", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    logs = sorted((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and logs[0].name.startswith("staging-migrate-")
    text = logs[0].read_text()
    assert "apply 001_create_workflow_executions" in text and f"applied {HEAD} migration(s)" in text
    assert SECRET not in text
    out = run_cli("rollback", "--config", str(prod_config), "--env", "staging", "--dsn", dsn, "--to", "4", "--yes")
    assert out.returncode == 0
    assert len(list((tmp_path / "logs").iterdir())) == 2
    run_cli("status", "--config", str(prod_config), "--env", "staging", "--dsn", dsn)  # read-only: no log
    assert len(list((tmp_path / "logs").iterdir())) == 2


def test_failed_run_is_logged_too(prod_config, db, tmp_path):
    db.query('DROP EXTENSION "uuid-ossp"')
    out = run_cli("migrate", "--config", str(prod_config), "--env", "staging", "--dsn", db.dsn)
    assert out.returncode == 7
    (log,) = (tmp_path / "logs").iterdir()
    assert "required extension(s) missing" in log.read_text()


def test_shipped_environments_carry_the_seed_policies():
    from bridge_db.config import load_config

    from conftest import CONFIG

    config = load_config(CONFIG)
    dev, staging, prod = (config.environments[n].policy for n in ("dev", "staging", "production"))
    assert dev.allow_reset and not staging.allow_reset and not prod.allow_reset
    assert staging.log_dir == "logs"
    assert prod.backup_before_migrate and prod.require_confirmation and prod.single_transaction
