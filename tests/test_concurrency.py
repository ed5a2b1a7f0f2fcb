"""Runners racing on one database: each migration applied exactly once; a bounded wait for the lock."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg2

from bridge_db.connection import LOCK_KEY

from conftest import ROOT, run_cli


def _slow_migration(folder):
    """A migration that holds the lock long enough for every runner to queue behind it."""
    (folder / "007_create_slow.sql").write_text(
        "-- Migration 007: slow on purpose\nCREATE TABLE IF NOT EXISTS slow_marker (id int);\nSELECT pg_sleep(1);\n"
    )
    (folder / "007_rollback_slow.sql").write_text("DROP TABLE IF EXISTS slow_marker;\n")


def test_eight_concurrent_runners_apply_each_migration_exactly_once(db, migrations_copy):
    _slow_migration(migrations_copy)
    command = [
        sys.executable,
        "-m",
        "bridge_db",
        "migrate",
        "--dsn",
        db.dsn,
        "--migrations-dir",
        str(migrations_copy),
        "--json",
        "--lock-wait",
        "60",
    ]
    runners = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)
    ]
    results = [(r.wait(timeout=120), r.stdout.read(), r.stderr.read()) for r in runners]
    for code, _, err in results:
        assert code == 0, err
    applied_per_runner = [len(json.loads(out)["steps"]) for _, out, _ in results]
    assert sorted(applied_per_runner) == [0] * 7 + [7]  # one runner did everything, seven found nothing
    assert db.query(
        "SELECT version, count(*) FROM schema_migrations_log WHERE success GROUP BY version ORDER BY version"
    ) == [(v, 1) for v in range(1, 8)]
    assert db.query("SELECT count(*) FROM schema_migrations") == [(7,)]


def test_lock_held_too_long_exits_4_naming_the_holder(db):
    holder = psycopg2.connect(db.dsn, application_name="stuck-runner")
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", "1")
        assert out.returncode == 4, out.stderr
        assert f"pid {pid}" in out.stderr and "stuck-runner" in out.stderr
        assert "pg_terminate_backend" in out.stderr
        assert db.query("SELECT to_regclass('workflow_executions')") == [(None,)]
    finally:
        holder.close()
    out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", "1")
    assert out.returncode == 0, out.stderr


def test_lock_wait_zero_fails_at_once(db):
    holder = psycopg2.connect(db.dsn)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", "0", "--json")
        assert out.returncode == 4
        error = json.loads(out.stdout)
        assert error["error"] == "lock_timeout" and error["holders"]
    finally:
        holder.close()


def test_the_lock_is_released_after_a_failed_run(db, migrations_copy):
    (migrations_copy / "007_create_bad.sql").write_text("SELECT 1/0;\n")
    (migrations_copy / "007_rollback_bad.sql").write_text("SELECT 1;\n")
    out = run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 6
    assert db.query(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
    ) == [(0,)]
    out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", "0", "--to", "6", "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0, out.stderr


def test_mixed_front_ends_race_and_each_migration_is_applied_once(db, migrations_copy, tmp_path):
    """Eight runners at once through the three front-ends: CLI, Invoke and Ansible."""
    import json
    import os

    _slow_migration(migrations_copy)
    config = tmp_path / "environments.toml"  # every front-end reads this one file, as in production
    config.write_text(f'[defaults]\nmigrations_dir = "{migrations_copy}"\n[environments.dev]\ndatabase = "{db.name}"\n')
    inventory = tmp_path / "bridge.yml"
    inventory.write_text(f"plugin: omninode.bridge.environments\nproject_dir: {ROOT}\nconfig: {config}\ngroup: dev\n")
    env = {
        **os.environ,
        "BRIDGE_DB_DSN": db.dsn,
        "BRIDGE_DB_CONFIG": str(config),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
    }
    env.pop("BRIDGE_DB_ENV", None)
    bin_dir = os.path.dirname(sys.executable)
    local = json.dumps({"ansible_connection": "local", "ansible_python_interpreter": sys.executable})
    commands = [[sys.executable, "-m", "bridge_db", "migrate", "--lock-wait", "90"]] * 3
    commands += [[os.path.join(bin_dir, "invoke"), "migrate", "--lock-wait", "90"]] * 3
    commands += [
        [os.path.join(bin_dir, "ansible-playbook"), "-i", str(inventory), "-e", local, "playbooks/dev_migrate.yml"]
    ] * 2
    runners = [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    results = [(r.wait(timeout=300), r.stdout.read(), r.stderr.read()) for r in runners]
    for code, out, err in results:
        assert code == 0, out + err
    assert db.query(
        "SELECT version, count(*) FROM schema_migrations_log WHERE success AND action = 'apply' "
        "GROUP BY version ORDER BY version"
    ) == [(v, 1) for v in range(1, 8)]
    assert [r[0] for r in db.query("SELECT version FROM schema_migrations ORDER BY 1")] == list(range(1, 8))


def test_rollback_racing_migrate_keeps_history_consistent(db):
    base = [sys.executable, "-m", "bridge_db"]
    assert subprocess.run([*base, "migrate", "--dsn", db.dsn], cwd=ROOT).returncode == 0
    for _ in range(3):
        racers = [
            subprocess.Popen(
                [*base, "rollback", "--steps", "3", "--dsn", db.dsn, "--lock-wait", "60", "--yes"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
            subprocess.Popen(
                [*base, "migrate", "--dsn", db.dsn, "--lock-wait", "60"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        ]
        assert [r.wait(timeout=120) for r in racers] == [0, 0]
    applied = [r[0] for r in db.query("SELECT version FROM schema_migrations ORDER BY 1")]
    assert applied == list(range(1, len(applied) + 1))  # a prefix, never a hole
    last_action = dict(
        db.query(
            "SELECT DISTINCT ON (version) version, action FROM schema_migrations_log WHERE success "
            "ORDER BY version, id DESC"
        )
    )
    assert sorted(v for v, a in last_action.items() if a == "apply") == applied  # history agrees with the log
    tables = {r[0] for r in db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    expected = {
        1: "workflow_executions",
        2: "workflow_steps",
        3: "fsm_transitions",
        4: "bridge_states",
        5: "node_registrations",
        6: "metadata_stamps",
    }
    assert {t for v, t in expected.items() if v in applied} == tables & set(expected.values())
