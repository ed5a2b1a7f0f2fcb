"""The console script, the Invoke tasks and the seed's scripts: output, JSON, exit codes, secrets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import psycopg2.extensions
import pytest

from bridge_db.errors import EXIT_CODES

from catalog import bridge_tables
from conftest import CONFIG, HEAD, ROOT, SHIPPED, run_cli

SECRET = "s3cret-Pa55word"


def test_help_lists_every_exit_code():
    out = run_cli("--help")
    assert out.returncode == 0
    for code, _ in EXIT_CODES:
        assert f"  {code:>3}  " in out.stdout


def test_migrate_then_status_json(db):
    out = run_cli("migrate", "--dsn", db.dsn, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [s["version"] for s in result["steps"]] == SHIPPED
    assert result["head_after"] == HEAD

    out = run_cli("status", "--dsn", db.dsn, "--json")
    assert out.returncode == 0
    status = json.loads(out.stdout)
    assert status["head"] == HEAD and status["pending"] == 0
    assert [m["version"] for m in status["migrations"]] == SHIPPED
    for item in status["migrations"]:
        assert item["applied"] is True and item["applied_at"] and item["name"]


def test_human_output_shows_each_migration_and_a_summary(db):
    out = run_cli("migrate", "--dsn", db.dsn, "--to", "2")
    assert out.returncode == 0
    assert "[1/2] apply 001_create_workflow_executions" in out.stderr
    assert "ok 002_create_workflow_steps.sql (" in out.stderr
    assert "applied 2 migration(s)" in out.stdout and "is now at 002" in out.stdout
    out = run_cli("status", "--dsn", db.dsn)
    assert re.search(r"^003 +create_fsm_transitions +pending", out.stdout, re.M)
    out = run_cli("migrate", "--dsn", db.dsn, "--dry-run")
    assert (
        f"would apply {HEAD - 2} migration(s)" in out.stdout and "-- ===== 006_create_metadata_stamps.sql" in out.stdout
    )
    assert db.query("SELECT max(version) FROM schema_migrations") == [(2,)]


@pytest.mark.parametrize("env", ["nope", "dev; rm -rf /", "prod'--", "$(id)"])
def test_unknown_or_hostile_environment_is_a_usage_error(env):
    out = run_cli("status", "--env", env)
    assert out.returncode == 2
    assert "dev, staging, production" in out.stderr


def test_malformed_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "environments.toml"
    bad.write_text("[environments.dev\nhost = 'x'\n")
    out = run_cli("status", "--config", str(bad))
    assert out.returncode == 2 and "malformed config" in out.stderr


@pytest.mark.parametrize("key", ["password", "PASSWORD", "dsn"])
def test_secrets_in_the_config_file_are_refused(tmp_path, key):
    bad = tmp_path / "environments.toml"
    bad.write_text(f'[environments.dev]\ndatabase = "x"\n{key} = "{SECRET}"\n')
    out = run_cli("status", "--config", str(bad))
    assert out.returncode == 2 and "secrets never live in this file" in out.stderr
    assert SECRET not in out.stderr + out.stdout


def test_unknown_config_key_is_refused(tmp_path):
    bad = tmp_path / "environments.toml"
    bad.write_text('[environments.dev]\ndatabase = "x"\nlock_wiat_seconds = 3\n')
    out = run_cli("status", "--config", str(bad))
    assert out.returncode == 2 and "lock_wiat_seconds" in out.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 port=1 dbname=x user=u password={SECRET} connect_timeout=2",
        f"postgresql://u:{SECRET}@127.0.0.1:1/x?connect_timeout=2",
    ],
)
def test_server_down_exits_3_and_never_prints_the_password(dsn):
    for args in (["migrate"], ["status", "--json"]):
        out = run_cli(*args, "--dsn", dsn)
        assert out.returncode == 3, out.stderr
        assert SECRET not in out.stdout + out.stderr
        assert "cannot connect to" in out.stdout + out.stderr


def test_password_in_environment_dsn_is_not_printed():
    out = run_cli("status", env={"BRIDGE_DB_DSN": f"host=127.0.0.1 port=1 password={SECRET} connect_timeout=2"})
    assert out.returncode == 3 and SECRET not in out.stdout + out.stderr


def test_malformed_dsn_is_a_usage_error_without_echo():
    out = run_cli("status", "--dsn", f"host=x password={SECRET} garbage")
    assert out.returncode == 2 and SECRET not in out.stdout + out.stderr


def test_new_scaffolds_the_next_pair_that_passes_validation(db, migrations_copy):
    out = run_cli("new", "add_index_workflow_steps_status", "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0, out.stderr
    forward = migrations_copy / "007_add_index_workflow_steps_status.sql"
    rollback = migrations_copy / "007_rollback_add_index_workflow_steps_status.sql"
    assert forward.is_file() and rollback.is_file()
    assert "-- Rollback:    007_rollback_add_index_workflow_steps_status.sql" in forward.read_text()
    out = run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy), "--json")
    assert out.returncode == 5 and "has no SQL statement" in json.loads(out.stdout)["message"]  # unfinished
    forward.write_text(forward.read_text() + "CREATE INDEX IF NOT EXISTS idx_ws_status2 ON workflow_steps (status);\n")
    rollback.write_text(rollback.read_text() + "DROP INDEX IF EXISTS idx_ws_status2;\n")
    out = run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["head_after"] == 7
    out = run_cli("new", "Bad Name!", "--migrations-dir", str(migrations_copy))
    assert out.returncode == 2
    assert not list(migrations_copy.glob("008_*"))


def test_reset_is_refused_outside_dev(db):
    run_cli("migrate", "--dsn", db.dsn)
    for env in ("staging", "production"):
        out = run_cli("reset", "--env", env, "--dsn", db.dsn)
        assert out.returncode == 9 and "refused" in out.stderr
    assert len(bridge_tables(db.connect())) == 6


def test_reset_on_dev_drops_everything_and_migrates_again(db):
    run_cli("migrate", "--dsn", db.dsn, "--to", "3")
    db.query("CREATE TABLE scratch_left_over (id int)")
    out = run_cli("reset", "--env", "dev", "--dsn", db.dsn, "--yes")  # not the embedded cluster: confirmed
    assert out.returncode == 0, out.stderr
    tables = bridge_tables(db.connect())
    assert "scratch_left_over" not in tables and len(tables) == 6
    assert db.query("SELECT count(*) FROM schema_migrations") == [(HEAD,)]
    assert db.query("SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'") == [(1,)]


def _invoke(*args, env=None):
    invoke = os.path.join(os.path.dirname(sys.executable), "invoke")
    return subprocess.run(
        [invoke, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )


def test_invoke_tasks_share_the_cli_behaviour(db):
    out = _invoke("migrate", "--dsn", db.dsn, "--to", "5")
    assert out.returncode == 0, out.stderr
    out = _invoke("status", "--dsn", db.dsn, "--json")
    assert json.loads(out.stdout)["head"] == 5
    out = _invoke("rollback", "--dsn", db.dsn, "--steps", "2")
    assert out.returncode == 9  # the DSN is not the environment's own database: confirmation needed
    out = _invoke("rollback", "--dsn", db.dsn, "--steps", "2", "--yes")
    assert out.returncode == 0
    assert db.query("SELECT max(version) FROM schema_migrations") == [(3,)]
    assert _invoke("verify", "--dsn", db.dsn).returncode == 0
    out = _invoke("migrate", "--env", "nope")
    assert out.returncode == 2 and "unknown environment" in out.stderr
    out = _invoke("reset", "--env", "staging", "--dsn", db.dsn)
    assert out.returncode == 9


def _pg_env(db) -> dict:
    params = psycopg2.extensions.parse_dsn(db.dsn)
    return {
        **os.environ,
        "PGHOST": params.get("host", ""),
        "PGPORT": str(params.get("port", 5432)),
        "PGUSER": params.get("user", ""),
        "PGDATABASE": db.name,
    }


def test_seed_scripts_run_twice_and_roll_back_everything(db):
    env = _pg_env(db)
    for _ in range(2):  # the seed's idempotency test: the second run must not error
        out = subprocess.run(["./scripts/run_migrations.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert "nothing to apply" in out.stdout
    assert len(bridge_tables(db.connect())) == 6
    out = subprocess.run(["./scripts/rollback_migrations.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 9 and len(bridge_tables(db.connect())) == 6  # not confirmed: nothing changed
    out = subprocess.run(
        ["./scripts/rollback_migrations.sh", "--yes"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert bridge_tables(db.connect()) == []


def test_seed_script_passes_arguments_and_exit_codes(db):
    env = _pg_env(db)
    out = subprocess.run(
        ["./scripts/run_migrations.sh", "--to", "2"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0
    out = subprocess.run(
        ["./scripts/rollback_migrations.sh", "--steps", "1", "--yes"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert db.query("SELECT max(version) FROM schema_migrations") == [(1,)]
    env["PGPORT"] = "1"
    out = subprocess.run(["./scripts/run_migrations.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 3


def test_config_file_is_found_from_a_subfolder(db):
    out = run_cli("status", "--dsn", db.dsn, "--json", cwd=ROOT / "migrations")
    assert out.returncode == 0 and json.loads(out.stdout)["pending"] == HEAD
    assert CONFIG.is_file()


def test_readme_exit_code_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES:
        assert f"| {code} | {meaning} |" in readme


def test_database_url_beside_an_environments_file_is_named_not_used(db):
    """In a project, the environment decides; a DATABASE_URL left in the shell for another app must not
    silently redirect `migrate`, nor be silently ignored."""
    out = run_cli("status", "--env", "staging", env={"DATABASE_URL": f"postgresql:///{db.name}"})
    assert out.returncode == 3  # staging's own server, which this machine cannot reach: not the URL's
    assert "DATABASE_URL is set but not used" in out.stderr and "--url" in out.stderr
    assert "staging-db.omninode.internal" in out.stderr
    out = run_cli("status", "--env", "staging", "--url", f"postgresql:///{db.name}", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["pending"] == HEAD


def test_migrations_dir_under_an_environment_is_refused_not_ignored(tmp_path):
    """It was accepted and silently ignored: every environment applied [defaults]' folder."""
    config = tmp_path / "environments.toml"
    config.write_text('[environments.staging]\ndatabase = "x"\nmigrations_dir = "elsewhere"\n')
    out = run_cli("status", "--config", str(config), "--env", "staging")
    assert out.returncode == 2
    assert "[environments.staging] sets migrations_dir" in out.stderr and "[defaults]" in out.stderr
