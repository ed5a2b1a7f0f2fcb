"""Issue 10 (part a): destructive verbs, secrets, deletions and the failures around the engine that an
adversarial review found. Each test fails on a291768 and passes now, against the real server."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from bridge_db import backup, engine, pgtools
from bridge_db.connection import LOCK_KEY

from catalog import bridge_tables
from conftest import HEAD, MIGRATIONS, ROOT, SHIPPED, drop_database, dsn_for, fake_backup, make_target, run_cli

# --------------------------------------------------------------------------- helpers


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(f'[defaults]\nmigrations_dir = "{MIGRATIONS}"\n{body}')
    return path


def _applied(db) -> list[int]:
    return [r[0] for r in db.query("SELECT version FROM schema_migrations ORDER BY 1")]


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`, with its content (or link target)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def _databases(db, pattern: str) -> list[str]:
    return [r[0] for r in db.query("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (pattern,))]


# --------------------------------------------------------------------------- critical 1: destructive verbs


def test_reset_through_a_dsn_without_terminal_or_yes_is_refused_and_changes_nothing(db, migrations):
    engine.migrate(db.target(), migrations)
    db.query(
        "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace) VALUES (gen_random_uuid(), 't', 'n')"
    )
    out = subprocess.run(
        [sys.executable, "-m", "bridge_db", "reset"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}, "BRIDGE_DB_DSN": db.dsn},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 9, out.stderr
    assert db.name in out.stderr and "--yes" in out.stderr and "Traceback" not in out.stderr
    assert len(bridge_tables(db.connect())) == 6
    assert db.query("SELECT count(*) FROM workflow_executions") == [(1,)]


def test_rollback_with_env_dev_and_a_dsn_elsewhere_is_refused_without_confirmation(db, migrations):
    engine.migrate(db.target(), migrations)
    out = run_cli("rollback", "--env", "dev", "--dsn", db.dsn, "--steps", "2")
    assert out.returncode == 9 and db.name in out.stderr and "--yes" in out.stderr
    assert _applied(db) == SHIPPED
    out = run_cli("rollback", "--env", "dev", "--dsn", db.dsn, "--steps", "2", "--yes")
    assert out.returncode == 0, out.stderr
    assert _applied(db) == SHIPPED[:-2]


def test_a_dsn_naming_another_environments_database_gets_that_policy(db, migrations, tmp_path):
    """`--env dev` with a DSN that names production's database: production's policy (no reset) applies."""
    engine.migrate(db.target(), migrations)
    params = psycopg2.extensions.parse_dsn(db.dsn)
    where = "".join(f'{k} = "{params[k]}"\n' for k in ("host", "user") if k in params)
    where += f"port = {int(params['port'])}\n" if "port" in params else ""
    config = _config(
        tmp_path,
        f'[environments.dev]\ndatabase = "scratch_dev"\nallow_reset = true\n'
        f'[environments.production]\ndatabase = "{db.name}"\nrequire_confirmation = true\n{where}',
    )
    out = run_cli("reset", "--config", str(config), "--env", "dev", "--dsn", db.dsn, "--yes")
    assert out.returncode == 9 and "production" in out.stderr, out.stderr
    assert len(bridge_tables(db.connect())) == 6
    out = run_cli("rollback", "--config", str(config), "--env", "dev", "--dsn", db.dsn)
    assert out.returncode == 9 and "production" in out.stderr
    assert _applied(db) == SHIPPED


# --------------------------------------------------------------------------- critical 2: vaulted password


def _sample_cmdlines(secret: str, leaks: list[str]) -> bool:
    """Every process's argv now: those holding `secret` go to `leaks`; True if the module was running."""
    saw_module = False
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        saw_module = saw_module or "AnsiballZ_bridge_migrate" in cmdline
        if secret in cmdline:
            leaks.append(cmdline)
    return saw_module


def test_vaulted_password_is_in_no_process_listing_and_not_in_vvv_output(db, tmp_path):
    secret = f"Vault-{uuid.uuid4().hex[:10]}-pw"
    role = f"bridge_vault_{uuid.uuid4().hex[:8]}"
    db.query(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (secret,))
    db.query(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        config = _config(
            tmp_path,
            f'[environments.staging]\nhost = "127.0.0.1"\nport = 5432\ndatabase = "{db.name}"\nuser = "{role}"\n',
        )
        inventory = tmp_path / "bridge.yml"
        inventory.write_text(
            f"plugin: omninode.bridge.environments\nproject_dir: {ROOT}\nconfig: {config}\n"
            "environments: [staging]\ngroup: staging\n"
        )
        extra = tmp_path / "vault_vars.yml"  # a file, as a decrypted vault is: never on a command line
        extra.write_text(
            json.dumps(
                {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "bridge_migrations_db_password": secret,
                }
            )
        )
        holder = psycopg2.connect(db.dsn)  # the run waits for this lock while /proc is sampled
        holder.autocommit = True
        holder.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "PG"))}
        env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
        playbook = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                "-vvv",
                "-i",
                str(inventory),
                "-e",
                f"@{extra}",
                "playbooks/staging_migrate.yml",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        leaks: list[str] = []
        saw_module = False
        waiting = False
        try:
            while playbook.poll() is None and not waiting:
                saw_module = _sample_cmdlines(secret, leaks) or saw_module
                # the module is connected and waiting for the lock: every process of the run exists now
                waiting = bool(
                    db.query(
                        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )
                time.sleep(0.02)
            saw_module = _sample_cmdlines(secret, leaks) or saw_module  # one full sample while the module waits
        finally:
            holder.close()
        output, _ = playbook.communicate(timeout=300)
        assert playbook.returncode == 0, output[-3000:]
        assert waiting and saw_module  # the sampling saw the run's processes
        assert leaks == []
        assert secret not in output
        assert "<localhost> EXEC" in output  # -vvv really printed the commands it ran
        assert _applied(db) == SHIPPED
        assert db.query("SELECT DISTINCT applied_by FROM schema_migrations") == [(role,)]
    finally:
        db.query(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.query(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_no_role_or_playbook_hands_a_secret_to_a_task_environment():
    """A task `environment:` becomes part of the module's /bin/sh -c command line (visible in ps and
    -vvv): secrets go to modules as no_log parameters instead."""
    import yaml

    def environments(node):
        if isinstance(node, dict):
            if "name" in node and "environment" in node:  # a task's or a play's own environment
                yield node["environment"]
            for value in node.values():
                yield from environments(value)
        elif isinstance(node, list):
            for item in node:
                yield from environments(item)

    found = []
    for path in [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("playbooks/*.yml")]:
        for value in environments(yaml.safe_load(path.read_text())):
            if "pass" in json.dumps(value).lower():
                found.append(f"{path.relative_to(ROOT)}: {value}")
    assert found == []


def test_ansible_module_without_the_engine_says_what_to_install(tmp_path):
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    out = subprocess.run(
        [
            ansible,
            "localhost",
            "-m",
            "omninode.bridge.bridge_migrate",
            "-a",
            f"project_dir={tmp_path} environment=dev",
            "-e",
            "ansible_connection=local ansible_python_interpreter=/usr/bin/python3",
        ],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "the bridge_db engine is not installed" in out.stdout and "next_step" in out.stdout, out.stdout
    assert "Traceback" not in out.stdout + out.stderr and "MODULE FAILURE" not in out.stdout


# --------------------------------------------------------------------------- critical 3: deletions


HOSTILE_MANIFESTS = {
    "dotdot globals": {"globals_file": ".."},
    "parent globals": {"globals_file": "../precious.txt"},
    "absolute globals": {"globals_file": "PRECIOUS"},  # filled in with an absolute path below
    "subfolder globals": {"globals_file": "sub/inner.sql"},
    "file names another": {"file": "../precious.txt"},
    "symlinked globals": {"globals_file": "SYMLINK"},
    "forged manifest for a folder that is not a backup": {"file": "FOLDER"},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_prune_refuses_a_manifest_naming_anything_but_its_own_files_and_deletes_nothing(tmp_path, case):
    parent = tmp_path / "parent"
    folder = parent / "backups"
    folder.mkdir(parents=True)
    (parent / "precious.txt").write_text("not a backup")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.sql").write_text("not ours")
    now = datetime.now(UTC)
    dumps = [fake_backup(folder, "omninode_bridge", now - timedelta(days=20 + d)) for d in range(6)]
    overrides = dict(HOSTILE_MANIFESTS[case])
    victim = dumps[-1]  # the oldest: retention would delete it
    if overrides.get("globals_file") == "PRECIOUS":
        overrides["globals_file"] = str(parent / "precious.txt")
    if overrides.get("globals_file") == "SYMLINK":
        overrides["globals_file"] = victim.name + ".globals.sql"
        (folder / overrides["globals_file"]).symlink_to(parent / "precious.txt")
    if overrides.get("file") == "FOLDER":  # someone's folder, and a manifest claiming it as a backup
        (folder / "important").mkdir()
        (folder / "important" / "keep.txt").write_text("not a backup")
        manifest = victim.with_name(victim.name + backup.MANIFEST_SUFFIX)
        (folder / "important.manifest.json").write_text(
            json.dumps({**json.loads(manifest.read_text()), "file": "important", "format": "directory"})
        )
        overrides = {}
    fake_backup(folder, "omninode_bridge", now - timedelta(days=25), **overrides)  # same name as the victim
    config = _config(
        tmp_path,
        f'[environments.test]\ndatabase = "x"\nbackup_dir = "{folder}"\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n',
    )
    (folder / ".lock").touch()  # prune's own lock file
    before = _tree(parent)
    for extra in (["--dry-run"], []):
        out = run_cli("prune", "--config", str(config), "--env", "test", *extra)
        assert out.returncode in (5, 8), out.stdout + out.stderr
        assert "nothing was deleted" in out.stderr and "Traceback" not in out.stderr
        assert _tree(parent) == before


def test_prune_dry_run_lists_exactly_the_files_prune_then_deletes(tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir()
    now = datetime.now(UTC)
    for d in range(8):
        dump = fake_backup(folder, "omninode_bridge", now - timedelta(days=10 * d))
        if d % 2:
            globals_name = dump.name + ".globals.sql"
            (folder / globals_name).write_text("-- roles")
            manifest = dump.with_name(dump.name + backup.MANIFEST_SUFFIX)
            manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "globals_file": globals_name}))
    config = _config(tmp_path, f'[environments.test]\ndatabase = "x"\nbackup_dir = "{folder}"\nkeep_last = 2\n')
    (folder / ".lock").touch()  # prune's own lock file
    before = set(os.listdir(folder))
    out = run_cli("prune", "--config", str(config), "--env", "test", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    would = json.loads(out.stdout)["deleted"]
    assert set(os.listdir(folder)) == before
    out = run_cli("prune", "--config", str(config), "--env", "test", "--json")
    assert out.returncode == 0, out.stderr
    gone = before - set(os.listdir(folder))
    assert sorted(json.loads(out.stdout)["deleted"]) == sorted(would) == sorted(str(folder / n) for n in gone)
    assert any(n.endswith(".globals.sql") for n in gone) and any(n.endswith(".manifest.json") for n in gone)


# --------------------------------------------------------------------------- critical 4: passwords in DSNs

PASSWORD = "Kx7q/Vz9w@Jm4t"
ENCODED = urllib.parse.quote(PASSWORD, safe="")
PIECES = ("Kx7q", "Vz9w", "Jm4t")

DSN_FORMS = {
    "uri raw slash and at": f"postgresql://u:{PASSWORD}@127.0.0.1:1/x",
    "uri raw slash": "postgresql://u:Kx7q/Vz9wJm4t@127.0.0.1:1/x",
    "uri raw at": "postgresql://u:Kx7q@Vz9wJm4t@127.0.0.1:1/x",
    "uri raw slash, numeric start": "postgresql://u:1234/Kx7qVz9wJm4t@127.0.0.1:1/x",
    "uri postgres scheme": f"postgres://u:{PASSWORD}@127.0.0.1:1/x",
    "uri percent-encoded": f"postgresql://u:{ENCODED}@127.0.0.1:1/x?connect_timeout=2",
    "uri password in query": f"postgresql://127.0.0.1:1/x?user=u&password={ENCODED}",
    "uri multi-host": f"postgresql://u:{ENCODED}@127.0.0.1:1,127.0.0.1:2/x",
    "uri socket host": f"postgresql://u:{ENCODED}@%2Ftmp%2Fbridge-nowhere/x",
    "uri ipv6": f"postgresql://u:{ENCODED}@[::1]:1/x",
    "keyword quoted": f"host=127.0.0.1 port=1 dbname=x user=u password='{PASSWORD}'",
    "keyword escaped quote": "host=127.0.0.1 port=1 dbname=x user=u password='Kx7q\\'Vz9w@Jm4t'",
    "keyword unquoted": f"host=127.0.0.1 port=1 dbname=x user=u password={PASSWORD}",
    "malformed unterminated quote": f"host=127.0.0.1 port=1 password='{PASSWORD}",
    "malformed ipv6": f"postgresql://u:{PASSWORD}@[::1/x",
    "malformed query key": f"postgresql://u:{ENCODED}@127.0.0.1:1/x?bogus=1",
    "malformed percent": "postgresql://u:Kx7q%zzVz9wJm4t@127.0.0.1:1/x",
    "malformed keyword": f"host=127.0.0.1 password {PASSWORD}",
}


@pytest.mark.parametrize("form", sorted(DSN_FORMS))
def test_a_password_in_any_dsn_form_is_never_printed_in_errors_json_or_logs(tmp_path, form):
    dsn = DSN_FORMS[form]
    logs = tmp_path / "logs"
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "x"\nlog_dir = "{logs}"\nconnect_timeout = 2\n')
    runs = [
        run_cli("migrate", "--config", str(config), "--env", "staging", "--dsn", dsn),
        run_cli("migrate", "--config", str(config), "--env", "staging", f"--dsn={dsn}", "--json"),
        run_cli("status", "--config", str(config), "--env", "staging", "--json", env={"BRIDGE_DB_DSN": dsn}),
        run_cli("status", "--config", str(config), "--env", "staging", dsn),  # a stray argument
        run_cli(dsn),
    ]
    for out in runs:
        assert out.returncode in (2, 3), out.stdout + out.stderr
        logged = "".join(p.read_text() for p in logs.glob("*")) if logs.exists() else ""
        text = out.stdout + out.stderr + logged
        for piece in PIECES + (ENCODED,):
            assert piece not in text, (form, text)
        assert "Traceback" not in text


def test_a_known_password_is_masked_in_output_and_in_the_log_file_wherever_it_appears(tmp_path):
    """The safety net behind the parsing: a password that happens to appear elsewhere (here the
    database name equals it) is masked on the terminal, in --json and in the log file alike."""
    secret = f"Pw{uuid.uuid4().hex[:10]}"
    logs = tmp_path / "logs"
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "x"\nlog_dir = "{logs}"\nconnect_timeout = 2\n')
    dsn = f"host=127.0.0.1 port=1 user=u dbname={secret} password={secret}"
    for extra in ([], ["--json"]):
        out = run_cli("migrate", "--config", str(config), "--env", "staging", "--dsn", dsn, *extra)
        assert out.returncode == 3, out.stderr
        assert "127.0.0.1:1/********" in out.stdout + out.stderr
        assert secret not in out.stdout + out.stderr
    logged = "".join(p.read_text() for p in logs.iterdir())
    assert "127.0.0.1:1/********" in logged and secret not in logged


# --------------------------------------------------------------------------- log_dir


def test_unwritable_log_dir_warns_and_the_run_still_succeeds(db, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "{db.name}"\nlog_dir = "{blocker / "logs"}"\n')
    out = run_cli("migrate", "--config", str(config), "--env", "staging", "--dsn", db.dsn)
    assert out.returncode == 0, out.stderr
    assert "warning:" in out.stderr and "Traceback" not in out.stderr
    assert _applied(db) == SHIPPED


def test_size_limited_log_dir_warns_and_a_committed_run_stays_a_success(db, tmp_path):
    logs = tmp_path / "logs"
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "{db.name}"\nlog_dir = "{logs}"\n')

    def limit():  # every file this process writes is cut at 200 bytes (EFBIG): a full, quota-bound disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "bridge_db", "migrate", "--config", str(config), "--env", "staging", "--dsn", db.dsn],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=limit,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "warning: the run log" in out.stderr and "Traceback" not in out.stderr
    assert _applied(db) == SHIPPED


def test_log_files_are_private_in_a_private_folder(db, tmp_path):
    logs = tmp_path / "new" / "logs"
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "{db.name}"\nlog_dir = "{logs}"\n')
    old = os.umask(0o022)
    try:
        out = run_cli("migrate", "--config", str(config), "--env", "staging", "--dsn", db.dsn)
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    (log,) = logs.iterdir()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- backup folder


def test_backup_into_an_existing_folder_keeps_its_mode_and_other_programs_partials(db, migrations, tmp_path):
    engine.migrate(db.target(), migrations)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    theirs = [shared / ".upload.partial", shared / f".{db.name}.tar.partial", shared / ".x-y.dump.partial"]
    for path in theirs:
        path.write_text("another program's work in progress")
    out = run_cli("backup", "--dsn", db.dsn, "--backup-dir", str(shared))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert all(p.exists() for p in theirs)


def test_a_dangling_symlink_and_a_naive_timestamp_do_not_break_listing_prune_or_the_status_file(db, tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir()
    now = datetime.now(UTC)
    (folder / f"{db.name}-20260101T000000Z.dump").symlink_to(tmp_path / "gone")
    naive = fake_backup(folder, db.name, now - timedelta(days=100))
    manifest = naive.with_name(naive.name + backup.MANIFEST_SUFFIX)
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "finished_at": "2026-01-01T00:00:00", "started_at": "2026-01-01T00:00:00"}))
    for d in range(3):
        fake_backup(folder, db.name, now - timedelta(days=40 + d))
    args = ("--dsn", db.dsn, "--backup-dir", str(folder))
    out = run_cli("backups", *args, "--json")
    assert out.returncode == 0, out.stderr
    states = {Path(e["path"]).name: e["state"] for e in json.loads(out.stdout)["backups"]}
    assert states[naive.name] == "invalid-manifest"
    out = run_cli("prune", *args)
    assert out.returncode == 0, out.stderr
    assert naive.exists() and "no time zone" in out.stderr
    status = tmp_path / "status.json"
    out = run_cli("backup", *args, "--prune", "--status-file", str(status))
    assert out.returncode == 0, out.stderr
    assert json.loads(status.read_text())["result"] == "ok"


def test_backup_dir_with_an_unknown_placeholder_is_a_usage_error(tmp_path):
    for value in ("{foo}", "{", "backups/{env"):
        config = _config(
            tmp_path,
            f'backup_dir = "{value}"\n[environments.staging]\ndatabase = "x"\n[environments.other]\ndatabase = "y"\n',
        )
        for env in ("staging", "other"):
            out = run_cli("migrate", "--config", str(config), "--env", env, "--dry-run")
            assert out.returncode == 2, out.stderr
            assert "backup_dir" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- scratch databases


def _blocking_pg_restore(tmp_path: Path, db) -> tuple[Path, Path]:
    """A BRIDGE_PG_BINDIR whose pg_restore --list is the real one, while a restore touches a file and
    hangs: the moment at which a run is killed."""
    bindir = tmp_path / "blockbin"
    bindir.mkdir()
    major = db.query("SELECT current_setting('server_version_num')::int / 10000")[0][0]
    real = pgtools.restore_tool(major, major).path.parent
    for tool in ("pg_dump", "pg_dumpall"):
        (bindir / tool).symlink_to(real / tool)
    started = tmp_path / "restore-started"
    script = bindir / "pg_restore"
    script.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --list "*|*" --version "*) exec {real / "pg_restore"} "$@";; esac\n'
        f"touch {started}\n"
        "exec sleep 600\n"
    )
    script.chmod(0o755)
    return bindir, started


@pytest.mark.parametrize("kind", ["verify", "drill", "overwrite"])
def test_databases_a_killed_backup_or_restore_leaves_are_dropped_by_the_next_run(db, migrations, tmp_path, kind):
    engine.migrate(db.target(), migrations)
    folder = tmp_path / "b"
    made = backup.take_backup(db.target(), folder)
    bindir, started = _blocking_pg_restore(tmp_path, db)
    args = {
        "verify": ["backup", "--backup-dir", str(folder), "--verify-restore"],
        "drill": ["restore", "--file", made.path],
        "overwrite": ["restore", "--file", made.path, "--overwrite", "--yes"],
    }[kind]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}
    killed = subprocess.Popen(
        [sys.executable, "-m", "bridge_db", *args, "--dsn", db.dsn],
        cwd=ROOT,
        env={**env, "BRIDGE_PG_BINDIR": str(bindir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while not started.exists():
        assert killed.poll() is None, "the run ended before its restore started"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    left = {  # what the killed run left behind (its mark names its pid; other workers' are theirs)
        r[0]
        for r in db.query(
            "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE %s",
            (f"%by pid {killed.pid} %",),
        )
    }
    assert len(left) == 1  # what the killed run left behind
    # not ours (no mark), and ours but in use: both stay
    foreign = f"bridge_verify_{uuid.uuid4().hex[:12]}"
    db.query(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(foreign)))
    try:
        again = args + (["--target-db", f"{db.name}_second"] if kind == "drill" else [])  # not the killed one's name
        out = run_cli(*again, "--dsn", db.dsn)
        assert out.returncode == 0, out.stderr
        now = {r[0] for r in db.query("SELECT datname FROM pg_database")}
        assert not (left & now), "the stale scratch database is still there"
        assert foreign in now
    finally:
        drop_database(db.admin_dsn, foreign)
        for name in _databases(db, db.name + "_%"):  # this test's only: other workers' databases are theirs
            drop_database(db.admin_dsn, name)


def test_a_marked_scratch_database_in_use_is_left_alone(db, tmp_path):
    name = f"bridge_verify_{uuid.uuid4().hex[:12]}"
    db.query(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db.query(
        sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(name)),
        (backup.SCRATCH_MARK + ": built by a run that was killed",),
    )
    user = psycopg2.connect(dsn_for(db.admin_dsn, name))
    try:
        assert name not in backup.clean_stale_scratch_databases(db.target())
        assert _databases(db, name) == [name]
    finally:
        user.close()
    backup.clean_stale_scratch_databases(db.target())  # (another test's cleanup may have been first)
    assert _databases(db, name) == []


# --------------------------------------------------------------------------- restore


def test_restore_over_with_a_non_superuser_admin_is_a_clear_error_and_leaves_no_copy(db, migrations, tmp_path):
    role = f"bridge_nosu_{uuid.uuid4().hex[:8]}"
    db.query(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
    db.query(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    as_role = psycopg2.extensions.make_dsn(db.dsn, user=role)
    try:
        engine.migrate(make_target(as_role), migrations)  # the role owns the tables, not the database
        made = backup.take_backup(db.target(), tmp_path / "b")
        out = run_cli("restore", "--dsn", as_role, "--file", made.path, "--overwrite", "--yes")
        assert out.returncode == 7, out.stdout + out.stderr
        assert "superuser" in out.stderr and "Traceback" not in out.stderr and "report it" not in out.stderr
        assert _databases(db, db.name + "%") == [db.name]  # no copy, nothing renamed
        assert len(bridge_tables(db.connect())) == 6
    finally:
        for name in _databases(db, "%incoming%"):
            drop_database(db.admin_dsn, name)
        db.query(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.query(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("shape", ["bridge-test-{}", "../bridge/test-{}"])
def test_a_database_name_with_a_dash_can_be_backed_up_and_restored(admin_dsn, migrations, tmp_path, shape):
    """`-` (and `/`, which must not lead the dump out of its folder) in the database name."""
    name = shape.format(uuid.uuid4().hex[:8])
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    conn.cursor().execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    conn.close()
    dsn = dsn_for(admin_dsn, name)
    created: list[str] = [name]
    try:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        conn.cursor().execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
        conn.close()
        out = run_cli("migrate", "--dsn", dsn)
        assert out.returncode == 0, out.stderr
        out = run_cli("backup", "--dsn", dsn, "--backup-dir", str(tmp_path / "b"), "--verify-restore", "--json")
        assert out.returncode == 0, out.stderr
        dump = json.loads(out.stdout)["path"]
        assert Path(dump).parent == tmp_path / "b"
        out = run_cli("restore", "--dsn", dsn, "--file", dump, "--json")  # default name: <db>_restore_<time>
        assert out.returncode == 0, out.stderr
        created.append(json.loads(out.stdout)["database"])
        out = run_cli("restore", "--dsn", dsn, "--file", dump, "--overwrite", "--yes", "--json")
        assert out.returncode == 0, out.stderr
        created.append(json.loads(out.stdout)["replaced"])
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM schema_migrations")
                assert cur.fetchone() == (HEAD,)
        finally:
            conn.close()
    finally:
        for database in created:
            drop_database(admin_dsn, database)


# --------------------------------------------------------------------------- connection settings


def test_dsn_keeps_the_environments_sslmode_unless_it_states_its_own(db, tmp_path):
    assert db.query("SHOW ssl") == [("off",)]  # this server has no TLS: sslmode=require must fail
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "{db.name}"\nsslmode = "require"\n')
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={db.name}"  # TLS is only tried over TCP
    out = run_cli("status", "--config", str(config), "--env", "staging", "--dsn", dsn)
    assert out.returncode == 3 and "SSL" in out.stderr, out.stderr
    out = run_cli("status", "--config", str(config), "--env", "staging", "--dsn", dsn + " sslmode=disable")
    assert out.returncode == 0, out.stderr
    assert "sslmode=disable replaces staging's sslmode=require" in out.stderr


@pytest.mark.parametrize(
    "setting",
    [
        'port = "abc"',
        "port = 0",
        "port = true",
        "host = 5",
        'sslmode = "sometimes"',
        'connect_timeout = "x"',
        "lock_wait_seconds = inf",
        "lock_wait_seconds = nan",
        "lock_wait_seconds = 1e308",
    ],
)
def test_connection_keys_and_numbers_in_the_config_are_type_checked(tmp_path, setting):
    config = _config(tmp_path, f'[environments.staging]\ndatabase = "x"\n{setting}\n')
    out = run_cli("status", "--config", str(config), "--env", "staging")
    assert out.returncode == 2, out.stdout + out.stderr
    assert setting.split()[0] in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "-1", "abc"])
def test_lock_wait_must_be_a_finite_number_of_seconds(db, value):
    out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", value)
    assert out.returncode == 2, out.stderr
    assert "--lock-wait" in out.stderr and "Traceback" not in out.stderr
    assert db.query("SELECT to_regclass('schema_migrations')") == [(None,)]


# --------------------------------------------------------------------------- signals and locks


def test_sigterm_during_migrate_rolls_back_says_so_and_exits_143(db, migrations_copy):
    (migrations_copy / "007_slow_step.sql").write_text(
        "-- Migration 007: slow on purpose\nCREATE TABLE before_the_signal (id int);\nSELECT pg_sleep(3);\nCREATE TABLE after_the_signal (id int);\n"
    )
    (migrations_copy / "007_rollback_slow_step.sql").write_text(
        "DROP TABLE IF EXISTS after_the_signal;\nDROP TABLE IF EXISTS before_the_signal;\n"
    )
    assert run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy), "--to", "6").returncode == 0
    runner = subprocess.Popen(
        [sys.executable, "-m", "bridge_db", "migrate", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the file runs whole (one round trip): the server's query text is the file, which holds the sleep
    while not db.query(
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%SELECT pg_sleep(3)%' "
        "AND pid <> pg_backend_pid()"
    ):
        assert runner.poll() is None, runner.communicate()
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 143, err
    assert "terminated" in err and "rolled back" in err and "Traceback" not in err
    assert db.query("SELECT to_regclass('before_the_signal')") == [(None,)]
    assert _applied(db) == list(range(1, 7))  # 001-006 of the copy; 007 rolled back
    assert db.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ) == [(0,)]


def test_production_migrate_waits_for_a_scheduled_backup_holding_the_folder(db, tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir(mode=0o700)
    config = _config(
        tmp_path,
        f'[environments.production]\ndatabase = "{db.name}"\nsingle_transaction = true\n'
        f'require_confirmation = true\nbackup_before_migrate = true\nbackup_dir = "{folder}"\n',
    )
    lock = open(folder / ".lock", "w")  # what a running scheduled backup holds
    fcntl.flock(lock, fcntl.LOCK_EX)
    runner = subprocess.Popen(
        [sys.executable, "-m", "bridge_db", "migrate", "--config", str(config), "--env", "production"]
        + ["--dsn", db.dsn, "--yes"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        while "waiting for another backup" not in seen:
            line = runner.stderr.readline()
            assert line, f"the run ended without waiting: {seen}"
            seen += line
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, seen + err
    assert _applied(db) == SHIPPED
    assert [p for p in folder.iterdir() if p.suffix == ".dump"]
