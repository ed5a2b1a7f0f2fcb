"""What CI and operators expect from a migration tool (issue 15): status --exit-code, wait and --wait,
history, repair, baseline, and schema.sql with verify --schema. Against real PostgreSQL, a database
per test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2.extensions

from bridge_db.errors import PENDING_EXIT_CODE
from bridge_db.schema_file import HEADER, dump_schema, normalise

from conftest import HEAD, MIGRATIONS, ROOT, make_target, run_cli

CLOSED_PORT = "host=127.0.0.1 port=57913 user=postgres dbname=nowhere connect_timeout=2"


def _config(tmp_path: Path, db, **policy) -> Path:
    """An environments.toml beside tmp_path/migrations whose one environment, `devlike`, is `db` itself."""
    params = psycopg2.extensions.parse_dsn(db.dsn)
    lines = ["[defaults]", 'migrations_dir = "migrations"', "", "[environments.devlike]", f'database = "{db.name}"']
    lines += [f'{key} = "{params[key]}"' for key in ("host", "user") if key in params]
    lines += [f"port = {int(params['port'])}"] if "port" in params else []
    lines += [f"{key} = {json.dumps(value)}" for key, value in policy.items()]
    path = tmp_path / "environments.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True,
        capture_output=True,
    )


# --------------------------------------------------------------------------- status --exit-code


def test_status_exit_code_pending_then_drift(db, migrations_copy):
    folder = ["--dsn", db.dsn, "--migrations-dir", str(migrations_copy)]
    assert run_cli("migrate", "--to", "3", *folder).returncode == 0
    out = run_cli("status", "--exit-code", *folder)
    assert out.returncode == PENDING_EXIT_CODE, out.stderr
    assert "3 pending" in out.stdout
    plain = run_cli("status", *folder)
    assert plain.returncode == 0  # without the flag, as before
    as_json = run_cli("status", "--exit-code", "--json", *folder)
    assert as_json.returncode == PENDING_EXIT_CODE
    assert json.loads(as_json.stdout) == json.loads(run_cli("status", "--json", *folder).stdout)

    assert run_cli("migrate", *folder).returncode == 0
    assert run_cli("status", "--exit-code", *folder).returncode == 0
    first = migrations_copy / "001_create_workflow_executions.sql"
    first.write_text(first.read_text() + "\n-- edited\n")
    assert run_cli("status", "--exit-code", *folder).returncode == 5
    assert run_cli("status", *folder).returncode == 5


# --------------------------------------------------------------------------- wait


def test_wait_on_a_closed_port_exits_3_naming_the_last_error():
    out = run_cli("wait", "--dsn", CLOSED_PORT, "--wait-timeout", "0.5")
    assert out.returncode == 3
    assert "Connection refused" in out.stderr and "after waiting 0.5 s" in out.stderr
    assert "--wait-timeout" in out.stderr
    out = run_cli("migrate", "--dsn", CLOSED_PORT, "--wait-timeout", "0.3", "--json")
    assert out.returncode == 3 and json.loads(out.stdout)["error"] == "connection"
    # without --wait, one attempt, as before
    out = run_cli("status", "--dsn", CLOSED_PORT)
    assert out.returncode == 3 and "after waiting" not in out.stderr


def test_wait_for_a_server_that_starts_late(tmp_path):
    """`wait` and `migrate --wait` started before the server: they keep trying and succeed once it is up."""
    from bridge_db.embedded import EmbeddedCluster

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    cluster = EmbeddedCluster.for_project(tmp_path, port=57100 + worker, folder="late")
    cluster.up(database="late_db", extensions=("uuid-ossp",))  # initdb once, then stop: "still starting"
    cluster.down()
    params = cluster.connection_params()
    dsn = f"host={params['host']} port={params['port']} user={params['user']} dbname=late_db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "bridge_db", "wait", "--dsn", dsn, "--wait-timeout", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        migrating = subprocess.Popen(
            [sys.executable, "-m", "bridge_db", "migrate", "--dsn", dsn, "--wait-timeout", "300", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        cluster.up()
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err
        assert out.startswith("ready: ")
        out, err = migrating.communicate(timeout=300)
        assert migrating.returncode == 0, err
        assert json.loads(out)["head_after"] == HEAD
    finally:
        cluster.down()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


# --------------------------------------------------------------------------- history


def test_history_lists_runs_newest_first_with_backup_and_restore_point(db, migrations_copy):
    folder = ["--dsn", db.dsn, "--migrations-dir", str(migrations_copy)]
    out = run_cli("history", *folder, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["runs"] == []
    assert run_cli("migrate", "--to", "4", *folder).returncode == 0
    assert run_cli("rollback", *folder, "--yes").returncode == 0
    broken = migrations_copy / "005_create_node_registrations.sql"
    broken.write_text(broken.read_text() + "\nSELECT no_such_function();\n")
    assert run_cli("migrate", *folder).returncode == 6
    # what a production run records (a backup) and what the pitr work records (a restore point)
    db.query(
        "INSERT INTO public.schema_migrations_log (run_id, action, version, name, checksum, success, started_at, "
        "execution_ms, details) VALUES (gen_random_uuid(), 'apply', 99, 'x', repeat('0', 64), true, now(), 1, %s)",
        (json.dumps({"backup": "/b/db.dump", "restore_point": {"name": "bridge_rp_1", "lsn": "0/3000028"}}),),
    )
    runs = json.loads(run_cli("history", *folder, "--json").stdout)["runs"]
    assert [r["action"] for r in runs] == ["apply", "apply", "rollback", "apply"]
    newest, failed, rolled_back, applied = runs
    assert newest["backup"] == "/b/db.dump"
    assert newest["restore_point"] == {"name": "bridge_rp_1", "lsn": "0/3000028"}
    assert failed["success"] is False and "no_such_function" in failed["error"] and failed["versions"] == [4, 5]
    assert rolled_back["versions"] == [4] and rolled_back["success"]
    assert applied["versions"] == [1, 2, 3, 4] and applied["os_user"] and applied["db_user"]
    text = run_cli("history", *folder, "--limit", "2")
    assert text.returncode == 0
    assert "restore point bridge_rp_1 at 0/3000028" in text.stdout and "failed:" in text.stdout
    assert "rollback" not in text.stdout  # --limit 2: the two newest runs only
    assert run_cli("history", *folder, "--limit", "0").returncode == 2


# --------------------------------------------------------------------------- repair


def test_repair_accepts_a_comment_edit_after_showing_it(db, migrations_copy):
    _git(migrations_copy, "init", "-q")
    _git(migrations_copy, "add", ".")
    _git(migrations_copy, "commit", "-qm", "migrations")
    folder = ["--dsn", db.dsn, "--migrations-dir", str(migrations_copy)]
    assert run_cli("migrate", *folder).returncode == 0
    edited = migrations_copy / "002_create_workflow_steps.sql"
    edited.write_text(edited.read_text().replace("-- ", "-- (typo fixed) ", 1))
    assert run_cli("migrate", *folder).returncode == 5
    before = db.query("SELECT version, checksum FROM schema_migrations ORDER BY version")

    assert run_cli("repair", "2", *folder).returncode == 2  # no --reason
    refused = run_cli("repair", "2", "--reason", "comment typo", *folder)  # not dev, no terminal, no --yes
    assert refused.returncode == 9
    assert "(typo fixed)" in refused.stderr and "only comments or layout differ" in refused.stderr
    assert db.query("SELECT version, checksum FROM schema_migrations ORDER BY version") == before

    out = run_cli("repair", "2", "--reason", "comment typo", "--yes", *folder)
    assert out.returncode == 0, out.stderr
    assert "+-- (typo fixed)" in out.stderr and "repaired" in out.stdout
    assert run_cli("migrate", *folder).returncode == 0
    assert run_cli("status", "--exit-code", *folder).returncode == 0
    row = db.query("SELECT os_user, details FROM schema_migrations_log WHERE action = 'repair'")
    assert len(row) == 1 and row[0][0]
    details = row[0][1]
    assert details["reason"] == "comment typo" and details["previous_checksum"] == dict(before)[2]
    runs = json.loads(run_cli("history", *folder, "--json").stdout)["runs"]
    assert runs[0]["action"] == "repair" and runs[0]["reason"] == "comment typo"
    # nothing left to repair
    again = run_cli("repair", "--reason", "again", "--yes", *folder)
    assert again.returncode == 0 and "nothing to repair" in again.stdout


def test_repair_on_dev_needs_no_confirmation_and_warns_of_changed_statements(db, migrations_copy, tmp_path):
    config = _config(tmp_path, db, allow_reset=True)
    base = ["--config", str(config), "--env", "devlike"]
    assert run_cli("migrate", *base).returncode == 0
    edited = migrations_copy / "003_create_fsm_transitions.sql"
    edited.write_text(edited.read_text() + "\nCOMMENT ON TABLE fsm_transitions IS 'changed';\n")
    out = run_cli("repair", "3", "--reason", "accepted on dev", *base)  # no git: no diff, said so
    assert out.returncode == 0, out.stderr
    assert "not in git history" in out.stderr
    assert run_cli("status", "--exit-code", *base).returncode == 0
    assert run_cli("repair", "9", "--reason", "x", *base).returncode == 2


# --------------------------------------------------------------------------- baseline


def test_baseline_adopts_a_schema_built_by_psql(db, migrations_copy):
    folder = ["--dsn", db.dsn, "--migrations-dir", str(migrations_copy)]
    empty = run_cli("baseline", "--to", "6", "--yes", *folder)
    assert empty.returncode == 5 and "does not have what migrations 001..006 declare" in empty.stderr
    assert db.query("SELECT to_regclass('public.schema_migrations')") == [(None,)]  # nothing created
    for version in range(1, 5):
        path = next(migrations_copy.glob(f"{version:03d}_create_*.sql"))
        db.psql("-f", str(path))
    assert run_cli("baseline", "--to", "6", "--yes", *folder).returncode == 5  # 005, 006 are not there
    assert run_cli("baseline", "--to", "4", *folder).returncode == 9  # not dev: confirmation
    assert run_cli("baseline", *folder, "--yes").returncode == 2  # --to is required
    out = run_cli("baseline", "--to", "4", "--yes", "--json", *folder)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["recorded"] == [1, 2, 3, 4]
    status = json.loads(run_cli("status", "--json", *folder).stdout)
    assert status["head"] == 4 and status["pending"] == 2 and not status["problems"]
    again = run_cli("baseline", "--to", "4", "--yes", *folder)
    assert again.returncode == 2 and "already has bridge-db history" in again.stderr
    applied = json.loads(run_cli("migrate", "--json", *folder).stdout)
    assert [s["version"] for s in applied["steps"]] == [5, 6]
    assert run_cli("verify", *folder).returncode == 0
    assert json.loads(run_cli("history", "--json", *folder).stdout)["runs"][1]["action"] == "baseline"


# --------------------------------------------------------------------------- schema.sql


def test_the_committed_schema_file_is_what_the_shipped_migrations_build(db):
    """CI fails on a migration committed without its schema.sql update."""
    assert run_cli("migrate", "--dsn", db.dsn).returncode == 0
    expected = (ROOT / "schema.sql").read_text()
    assert dump_schema(make_target(db.dsn)) == expected, "run `invoke migrate` on dev and commit schema.sql"
    assert run_cli("verify", "--schema", "--dsn", db.dsn).returncode == 0


def test_migrate_and_rollback_on_dev_write_the_schema_file_and_verify_compares(db, migrations_copy, tmp_path):
    config = _config(tmp_path, db, allow_reset=True, schema_file=True)
    base = ["--config", str(config), "--env", "devlike"]
    schema = tmp_path / "schema.sql"  # beside the migrations folder, not in it
    out = run_cli("migrate", "--to", "5", *base)
    assert out.returncode == 0 and f"schema written: {schema}" in out.stdout
    assert "metadata_stamps" not in schema.read_text() and "node_registrations" in schema.read_text()
    assert run_cli("migrate", *base).returncode == 0
    full = schema.read_text()
    assert "CREATE TABLE public.metadata_stamps" in full and "schema_migrations" not in full
    mtime = schema.stat().st_mtime_ns
    assert run_cli("migrate", *base).returncode == 0  # no-op: not rewritten
    assert schema.stat().st_mtime_ns == mtime
    assert run_cli("verify", "--schema", *base).returncode == 0
    assert run_cli("lint", "--no-squawk", *base).returncode == 0  # the migrations folder holds no stray file

    db.query("ALTER TABLE metadata_stamps ADD COLUMN hand_made text")
    drift = run_cli("verify", "--schema", *base)
    assert drift.returncode == 5
    assert "+    hand_made text" in drift.stderr and "differs from" in drift.stderr
    db.query("ALTER TABLE metadata_stamps DROP COLUMN hand_made")

    assert run_cli("rollback", *base).returncode == 0
    assert "metadata_stamps" not in schema.read_text()
    # through a DSN that reaches another database (a test database, a CI job): never written
    other = tmp_path / "other"
    shutil.copytree(migrations_copy, other / "migrations")
    assert run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(other / "migrations")).returncode == 0
    assert not (other / "schema.sql").exists()


def test_verify_schema_without_a_schema_file_says_how_to_make_one(db, migrations_copy):
    out = run_cli("verify", "--schema", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 2 and "does not exist" in out.stderr and "migrate on dev" in out.stderr


def test_normalise_drops_what_differs_between_runs_and_pg_dump_versions():
    body = "CREATE TABLE public.t (\n    id integer NOT NULL\n);\n"
    dump_15 = (
        "--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 15.2\n-- Dumped by pg_dump version 15.2\n"
        "\nSET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\n--\n"
        '-- Name: uuid-ossp; Type: EXTENSION; Schema: -; Owner: -\n--\n\nCREATE EXTENSION IF NOT EXISTS "uuid-ossp" '
        "WITH SCHEMA public;\n\n\nSET default_tablespace = '';\n\n--\n-- Name: t; Type: TABLE; Schema: public; "
        f"Owner: -\n--\n\n{body}\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
    )
    dump_18 = (
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123randomKey\n\n-- Dumped from database version 18.0\n"
        "-- Dumped by pg_dump version 18.1\n\nSET transaction_timeout = 0;\n\n--\n-- Name: t; Type: TABLE; "
        f"Schema: public; Owner: -\n--\n\n{body}\n--\n-- PostgreSQL database dump complete\n--\n\n"
        "\\unrestrict AbC123randomKey\n\n"
    )
    assert normalise(dump_15) == normalise(dump_18) == HEADER + "\n" + body


def test_the_schema_file_is_beside_the_migrations_folder_not_in_it():
    assert (ROOT / "schema.sql").is_file() and not (MIGRATIONS / "schema.sql").exists()
