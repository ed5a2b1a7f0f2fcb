"""Review 10: reproductions of defects the hardening of issue 10 left or introduced, against the real
server. Each test fails before its fix."""

from __future__ import annotations

import os
from contextlib import contextmanager

import psycopg2
import pytest

from bridge_db import backup, engine, pgtools
from bridge_db.cli import Terminated
from bridge_db.discovery import discover_migrations
from bridge_db.errors import MigrationFailed

from conftest import HEAD, drop_database, fake_backup
from conftest import MIGRATIONS as MIGRATIONS_DIR


def _databases(db, pattern: str) -> list[str]:
    conn = psycopg2.connect(db.admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (pattern,))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


# --------------------------------------------------------------------------- restore --overwrite's swap


def test_sigterm_between_the_two_renames_of_the_overwrite_swap_keeps_the_environments_database(
    db, migrations, tmp_path, monkeypatch
):
    """SIGTERM (or SIGKILL) after `current -> keep_as` and before `incoming -> current`: the
    environment's database must still be there under its own name, not renamed away with the restored
    copy dropped."""
    engine.migrate(db.target(), migrations)
    made = backup.take_backup(db.target(), tmp_path / "b")
    real = backup._maintenance
    renames = []

    class Cursor:
        def __init__(self, cur):
            self.cur = cur

        def execute(self, statement, params=None):
            text = statement.as_string(self.cur) if hasattr(statement, "as_string") else statement
            if "RENAME TO" in text:
                renames.append(text)
                if len(renames) == 2:
                    raise Terminated()
            return self.cur.execute(statement, params)

        def __getattr__(self, name):
            return getattr(self.cur, name)

    @contextmanager
    def maintenance(admin):
        with real(admin) as cur:
            yield Cursor(cur)

    monkeypatch.setattr(backup, "_maintenance", maintenance)
    try:
        with pytest.raises(Terminated):
            backup.restore_backup(db.target(), db.target(), made.path, overwrite=True, confirm=lambda q: True)
        assert _databases(db, db.name) == [db.name], "the environment's database was renamed away"
        assert db.query("SELECT count(*) FROM schema_migrations") == [(HEAD,)]
    finally:
        for name in _databases(db, db.name + "_%"):
            drop_database(db.admin_dsn, name)


# --------------------------------------------------------------------------- no-transaction files

NO_TX = "-- bridge:no-transaction\n"


def _add(folder, number: int, forward: str, rollback: str = "SELECT 1;\n", name: str = "change") -> None:
    (folder / f"{number:03d}_{name}.sql").write_text(forward)
    (folder / f"{number:03d}_rollback_{name}.sql").write_text(rollback)


def test_a_resumed_no_transaction_file_runs_its_set_statements_again(db, migrations_copy):
    """SET is allowed in a no-transaction file so that its later statements run with it; a rerun that
    resumes after the last completed statement skipped the SET, so the rest ran with the default
    search_path: here on public's table of the same name instead of the intended schema's."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query(
        "CREATE SCHEMA review10; CREATE TABLE review10.items (a int, b int); CREATE TABLE public.items (a int, b int)"
    )
    db.query("INSERT INTO review10.items VALUES (1, 1), (2, 1)")
    _add(
        migrations_copy,
        7,
        NO_TX
        + "SET search_path = review10;\n"
        + "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_a ON items (a);\n"
        + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_b ON items (b);\n",
    )
    with pytest.raises(MigrationFailed, match="could not create unique index"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query("DELETE FROM review10.items WHERE a = 2")
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    placed = db.query(
        "SELECT n.nspname, c.relname, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname IN ('items_a', 'items_b') ORDER BY 2"
    )
    assert placed == [("review10", "items_a", True), ("review10", "items_b", True)]


@pytest.mark.parametrize(
    "index, table",
    [('"Uq_Items_B"', "items"), ("uq_items_b", "review10.items")],
    ids=["quoted-mixed-case-name", "schema-qualified-table"],
)
def test_an_invalid_index_left_by_a_failed_concurrent_build_is_rebuilt_whatever_its_name(
    db, migrations_copy, index, table
):
    """The invalid index was looked up by its bare, unquoted name: a mixed-case name or a table in
    another schema was not found, so IF NOT EXISTS skipped the build and the run recorded the migration
    as applied with the index still INVALID."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query("CREATE SCHEMA review10; CREATE TABLE review10.items (a int, b int)")
    db.query("INSERT INTO review10.items VALUES (1, 1), (2, 1)")
    if "." not in table:
        db.query("ALTER DATABASE " + db.name + " SET search_path = review10, public")
    _add(
        migrations_copy,
        7,
        NO_TX + f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (b);\n",
    )
    with pytest.raises(MigrationFailed, match="could not create unique index"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query("DELETE FROM review10.items WHERE a = 2")
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    state = db.query(
        "SELECT x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid WHERE c.relname = %s",
        (index.strip('"'),),
    )
    assert state == [(True,)], "the migration was recorded as applied with its index INVALID"


# --------------------------------------------------------------------------- which database a verb reaches


def test_a_dsn_whose_hostaddr_leads_to_another_server_is_not_the_environments_own(tmp_path):
    """libpq connects to `hostaddr` and uses `host` only for TLS and .pgpass: a DSN with staging's host
    name and another address reaches another server, yet it got staging's policy (no confirmation for
    rollback or restore --overwrite) instead of being treated as a foreign database."""
    from bridge_db.config import load_config
    from bridge_db.connection import resolve_target

    config = load_config(None)
    own = "host=staging-db.omninode.internal port=5432 dbname=omninode_bridge user=bridge_migrator"
    assert not resolve_target(config, "staging", own).foreign
    elsewhere = resolve_target(config, "staging", own + " hostaddr=192.0.2.7")
    assert elsewhere.foreign, "a DSN reaching another server by hostaddr was taken for staging's own database"


def test_reset_of_the_embedded_environment_does_not_follow_pghostaddr_to_another_server(db, migrations, monkeypatch):
    """reset skips its confirmation on the embedded dev cluster, which it reaches through its socket;
    PGHOSTADDR (or a service's hostaddr) makes libpq connect to that address instead, so the unconfirmed
    reset emptied whatever database of that name the address serves."""
    from dataclasses import replace

    from bridge_db.errors import RefusedByPolicy

    engine.migrate(db.target(), migrations)
    (data_directory,) = db.query("SHOW data_directory")[0]

    class Cluster:  # the embedded cluster, as far as reset needs it: this server, through its socket
        data_dir = data_directory

        def up(self, database=None):
            raise AssertionError("not started here")

    own = db.target(allow_reset=True)
    params = {**own.params, "host": "/var/run/postgresql", "port": 5432, "dbname": db.name, "user": "postgres"}
    embedded = replace(own, dsn=None, params=params, embedded=Cluster())
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.1")
    with pytest.raises(RefusedByPolicy):
        engine.reset_schema(embedded, confirm=None)
    assert db.query("SELECT count(*) FROM schema_migrations") == [(HEAD,)]
    monkeypatch.delenv("PGHOSTADDR")
    engine.reset_schema(embedded, confirm=None)  # through the socket: the embedded cluster, no question
    assert db.query("SELECT to_regclass('public.schema_migrations')") == [(None,)]


# --------------------------------------------------------------------------- idle sessions


def _slow_pg_dump(tmp_path, db, seconds: float):
    """A BRIDGE_PG_BINDIR whose pg_dump takes `seconds` longer: the time the run's own sessions idle."""

    bindir = tmp_path / "slowbin"
    bindir.mkdir()
    major = db.query("SELECT current_setting('server_version_num')::int / 10000")[0][0]
    real = pgtools.dump_tool("pg_dump", major).path.parent
    for tool in ("pg_restore", "pg_dumpall"):
        (bindir / tool).symlink_to(real / tool)
    script = bindir / "pg_dump"
    script.write_text(
        f'#!/bin/sh\ncase " $* " in *" --version "*) exec {real / "pg_dump"} "$@";; esac\n'
        f'sleep {seconds}\nexec {real / "pg_dump"} "$@"\n'
    )
    script.chmod(0o755)
    return bindir


def test_an_idle_session_timeout_does_not_end_the_session_that_holds_the_migration_lock(
    db, migrations, tmp_path, monkeypatch
):
    """A database (or role) with idle_session_timeout: while the production path's backup runs, the
    session holding the migration lock idles; the server ends it, the lock goes with it (another runner
    could start) and the run fails after its backup. The engine's sessions must not idle out."""
    engine.migrate(db.target(), [m for m in migrations if m.version <= 5])
    db.query(f"ALTER DATABASE {db.name} SET idle_session_timeout = '1s'")
    monkeypatch.setenv("BRIDGE_PG_BINDIR", str(_slow_pg_dump(tmp_path, db, 2.5)))
    target = db.target(backup_before_migrate=True, backup_dir=str(tmp_path / "b"))
    result = engine.migrate(target, migrations, backup_dir=tmp_path / "b")
    assert result.backup and len(result.steps) == len(migrations) - 5


def test_a_backup_longer_than_idle_in_transaction_session_timeout_succeeds(db, migrations, tmp_path, monkeypatch):
    """The session that exports pg_dump's snapshot sits idle in its transaction for the whole dump; with
    idle_in_transaction_session_timeout (common in production) shorter than the dump, the server ended
    it and every backup longer than that failed at its COMMIT."""
    engine.migrate(db.target(), migrations)
    db.query(f"ALTER DATABASE {db.name} SET idle_in_transaction_session_timeout = '1s'")
    monkeypatch.setenv("BRIDGE_PG_BINDIR", str(_slow_pg_dump(tmp_path, db, 2.5)))
    made = backup.take_backup(db.target(), tmp_path / "b", verify_restore=True)
    assert made.manifest.migration_head == HEAD


def test_a_first_run_does_not_skip_a_concurrent_build_because_another_index_has_its_name(db, migrations_copy):
    """The catalog check that makes a repeat after a kill a no-op ran on every statement of every run:
    on a first run, CREATE INDEX CONCURRENTLY i ON t (b) was skipped because an index `i` already existed
    (on another table), and the migration was recorded as applied without its index. PostgreSQL would
    have refused the statement; only the statement a killed run may have completed may be skipped."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query("CREATE TABLE review10_a (a int); CREATE TABLE review10_b (b int)")
    db.query("CREATE INDEX review10_idx ON review10_a (a)")
    _add(migrations_copy, 7, NO_TX + "CREATE INDEX CONCURRENTLY review10_idx ON review10_b (b);\n")
    with pytest.raises(MigrationFailed, match="already exists"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert db.query("SELECT count(*) FROM schema_migrations WHERE version = 7") == [(0,)]


# --------------------------------------------------------------------------- prune


def test_prune_never_deletes_the_only_backups_of_another_database_in_a_shared_folder(tmp_path):
    """Two environments whose backup_dir is the same folder (a fixed path, no {env}): retention counted
    every database's backups together, so staging's eight newer backups made prune delete every backup
    of production, its newest verified one included."""
    from datetime import UTC, datetime, timedelta

    folder = tmp_path / "shared"
    folder.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    prod = [fake_backup(folder, "bridge_prod", now - timedelta(days=40 + i), "production") for i in range(2)]
    for i in range(8):
        fake_backup(folder, "bridge_staging", now - timedelta(hours=i), "staging")
    deleted = backup.prune(folder, keep_last=7, keep_daily=0, keep_weekly=0)
    assert prod[0].exists(), f"production's newest verified backup was deleted: {deleted}"


# --------------------------------------------------------------------------- lock wait


def test_a_lock_wait_below_one_millisecond_does_not_wait_forever(db, migrations):
    """lock_timeout was set to int(seconds * 1000) ms: --lock-wait 0.0004 became lock_timeout = 0,
    which PostgreSQL reads as 'no limit', so the run waited for ever instead of exiting 4."""
    import threading

    from bridge_db.connection import LOCK_KEY
    from bridge_db.errors import LockTimeout

    holder = db.connect()
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            engine.migrate(db.target(), migrations, lock_wait=0.0004)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    holder.close()  # lets a run that waited for ever go on
    worker.join(30)
    assert outcome and isinstance(outcome[0], LockTimeout), f"waited more than 10 s for a 0.0004 s lock wait: {outcome}"


# --------------------------------------------------------------------------- configuration ranges


@pytest.mark.parametrize(
    "setting, verb",
    [
        ("lock_timeout_ms = 3000000000", "migrate"),  # above PostgreSQL's int range: exit 1 "report it"
        ("statement_timeout_ms = 99999999999", "migrate"),
        ("keep_daily = 1000000000", "prune"),  # timedelta overflow: a traceback
        ("keep_weekly = 200000000", "prune"),
        ("backup_jobs = 0", "backup"),  # pg_restore refuses it after the whole dump: exit 8
    ],
)
def test_out_of_range_policy_values_are_configuration_errors(db, migrations, tmp_path, setting, verb):
    from conftest import MIGRATIONS, run_cli

    engine.migrate(db.target(), [m for m in migrations if m.version <= 5])
    config = tmp_path / "environments.toml"
    config.write_text(
        f'[defaults]\nmigrations_dir = "{MIGRATIONS}"\nbackup_dir = "{tmp_path}/b/{{env}}"\n'
        f'[environments.t]\nhost = "127.0.0.1"\nuser = "postgres"\ndatabase = "{db.name}"\n{setting}\n'
    )
    (tmp_path / "b" / "t").mkdir(parents=True)
    fake_backup(tmp_path / "b" / "t", db.name, __import__("datetime").datetime.now(__import__("datetime").UTC))
    args = {"migrate": ["migrate"], "prune": ["prune", "--dry-run"], "backup": ["backup", "--verify-restore"]}[verb]
    out = run_cli(*args, "--config", str(config), "--env", "t")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert setting.split()[0] in out.stderr


@pytest.mark.parametrize("verb", ["backup", "restore"])
def test_jobs_out_of_range_is_a_usage_error_before_anything_runs(verb):
    from conftest import run_cli

    args = {"backup": ["backup", "--format", "directory"], "restore": ["restore", "--file", "/nonexistent"]}[verb]
    out = run_cli(*args, "--jobs", "-3", "--dsn", "host=127.0.0.1 user=postgres dbname=postgres")
    assert out.returncode == 2 and "--jobs" in out.stderr, out.stderr


# --------------------------------------------------------------------------- the migration lock


def test_a_migration_that_releases_the_engines_lock_is_not_committed(db, migrations_copy):
    """pg_advisory_unlock_all() in a migration (a cleanup of the application's own advisory locks)
    also released bridge-db's migration lock: the run went on unserialised, and a second runner could
    start beside it. The migration that released it must not be committed, and the run must stop."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _add(migrations_copy, 7, "CREATE TABLE review10_a (a int);\nSELECT pg_advisory_unlock_all();\n", name="unlock")
    _add(
        migrations_copy,
        8,
        "CREATE TABLE review10_b (b int);\n"
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) "
        "THEN RAISE EXCEPTION 'ran without the migration lock'; END IF; END $$;\n",
        name="second",
    )
    with pytest.raises(MigrationFailed, match="lock"):
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert db.query("SELECT max(version) FROM schema_migrations") == [(6,)]
    assert db.query("SELECT to_regclass('review10_a')") == [(None,)]


# --------------------------------------------------------------------------- the client tools' connection


def test_pg_dump_and_pg_restore_get_every_security_setting_of_the_dsn():
    """The child tools get the connection through PG* variables, but only 16 keys were mapped: a DSN's
    channel_binding, require_auth, sslcrl, ssl_min_protocol_version, gssencmode, requirepeer ... were
    dropped, so pg_dump connected without the protections the engine's own connection had."""
    from bridge_db.config import load_config
    from bridge_db.connection import libpq_environment, resolve_target

    settings = {
        "channel_binding": ("require", "PGCHANNELBINDING"),
        "require_auth": ("scram-sha-256", "PGREQUIREAUTH"),
        "sslcrl": ("/etc/ssl/crl.pem", "PGSSLCRL"),
        "sslcrldir": ("/etc/ssl/crls", "PGSSLCRLDIR"),
        "ssl_min_protocol_version": ("TLSv1.3", "PGSSLMINPROTOCOLVERSION"),
        "gssencmode": ("disable", "PGGSSENCMODE"),
        "requirepeer": ("postgres", "PGREQUIREPEER"),
        "krbsrvname": ("postgres", "PGKRBSRVNAME"),
    }
    dsn = "host=db.example dbname=d user=u sslmode=verify-full " + " ".join(
        f"{k}={v}" for k, (v, _) in settings.items()
    )
    try:
        target = resolve_target(load_config(None), "staging", dsn)
    except Exception as exc:  # a libpq too old for a key: that key's check is moot
        pytest.skip(f"libpq does not know every key: {exc}")
    env = libpq_environment(target)
    missing = {k: var for k, (v, var) in settings.items() if env.get(var) != v}
    assert not missing, f"not passed to pg_dump/pg_restore: {missing}"


# --------------------------------------------------------------------------- what no migration file can run


@pytest.mark.parametrize("header", ["", NO_TX], ids=["transactional", "no-transaction"])
def test_a_statement_no_migration_file_can_run_is_refused_before_the_run_with_one_advice(db, migrations_copy, header):
    """DETACH PARTITION ... CONCURRENTLY cannot run in a transaction, and a no-transaction file refused it
    with 'move it to a migration without -- bridge:no-transaction'; there the run applied the earlier
    migrations and then failed with 'cannot run inside a transaction block' (exit 6): each kind of file
    sent the user to the other. It is refused before anything runs, with advice that can work."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _add(migrations_copy, 7, "CREATE TABLE review10_ok (a int);\n", name="first")
    _add(migrations_copy, 8, header + "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;\n", name="detach")
    from bridge_db.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        engine.migrate(db.target(), discover_migrations(migrations_copy))
    assert "without -- bridge:no-transaction" not in refused.value.next_step
    assert db.query("SELECT max(version) FROM schema_migrations") == [(6,)]


# --------------------------------------------------------------------------- concurrent restores


def test_a_restore_target_created_meanwhile_by_another_run_is_a_clear_error_and_is_kept(
    db, migrations, tmp_path, monkeypatch
):
    """Two restores into the same name (the default <db>_restore_<second>, or one --target-db): both pass
    the 'already exists' check, the second waits for the first's scratch lock, then CREATE DATABASE fails:
    an 'unexpected database error ... report it' (exit 1). It must be the usage error it is, and the
    other run's database must stay."""
    from bridge_db.errors import BridgeDbError

    engine.migrate(db.target(), migrations)
    made = backup.take_backup(db.target(), tmp_path / "b")
    name = f"{db.name}_other_run"
    real_exists = backup._database_exists

    def exists_after_the_check(admin, database):
        found = real_exists(admin, database)
        drop_database(db.admin_dsn, name)  # (idempotent) then "the other run" creates it, marked as its own
        conn = psycopg2.connect(db.admin_dsn)
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return found

    monkeypatch.setattr(backup, "_database_exists", exists_after_the_check)
    try:
        with pytest.raises(BridgeDbError) as failed:
            backup.restore_backup(db.target(), db.target(), made.path, target_db=name, confirm=lambda q: True)
        assert failed.value.exit_code == 2 and name in failed.value.message
        assert _databases(db, name) == [name]
    finally:
        drop_database(db.admin_dsn, name)


# --------------------------------------------------------------------------- the backup folder's lock


@pytest.mark.parametrize("shape", ["folder", "symlink"])
@pytest.mark.parametrize("verb", ["prune", "backup"])
def test_a_lock_file_that_cannot_be_opened_is_exit_8_not_a_traceback(tmp_path, shape, verb):
    """The backup folder's `.lock` as a folder (or a symlink, which O_CREAT followed out of the folder,
    creating a file there): IsADirectoryError reached the user as a traceback (exit 1)."""
    from conftest import run_cli

    folder = tmp_path / "b"
    folder.mkdir()
    outside = tmp_path / "elsewhere"
    if shape == "folder":
        (folder / ".lock").mkdir()
    else:
        (folder / ".lock").symlink_to(outside)
    out = run_cli(verb, "--dsn", "host=127.0.0.1 user=postgres dbname=postgres", "--backup-dir", str(folder))
    assert out.returncode == 8 and "Traceback" not in out.stderr and ".lock" in out.stderr, out.stderr
    assert not outside.exists(), "the lock file's symlink was followed out of the folder"


# --------------------------------------------------------------------------- manifests are data


@pytest.mark.parametrize(
    "field, value",
    [("verification", [1]), ("verification", None), ("size_bytes", "abc"), ("database", 5), ("row_counts", "x")],
)
@pytest.mark.parametrize("verb", ["backups", "prune", "restore"])
def test_a_manifest_field_of_the_wrong_type_is_not_a_traceback(tmp_path, field, value, verb):
    """A manifest is JSON anyone may edit: `verification: [1]` or `null` crashed backups and prune with
    AttributeError, `size_bytes: "abc"` the listing, `database: 5` the restore (exit 1, tracebacks)."""
    import json
    from datetime import UTC, datetime

    from conftest import run_cli

    folder = tmp_path / "b"
    folder.mkdir()
    dump = fake_backup(folder, "postgres", datetime.now(UTC))
    manifest = dump.with_name(dump.name + backup.MANIFEST_SUFFIX)
    data = json.loads(manifest.read_text())
    data[field] = value
    manifest.write_text(json.dumps(data))
    args = {
        "backups": ["backups", "--backup-dir", str(folder)],
        "prune": ["prune", "--backup-dir", str(folder)],
        "restore": ["restore", "--file", str(dump)],
    }[verb]
    out = run_cli(*args, "--dsn", "host=127.0.0.1 user=postgres dbname=postgres")
    assert "Traceback" not in out.stderr and out.returncode in (0, 8), out.stderr
    assert dump.exists()


# --------------------------------------------------------------------------- dry run


def test_a_dry_run_refuses_what_the_real_run_would_refuse(db, migrations_copy):
    """`migrate --dry-run` (a CI check before deploying) printed a file with a syntax error, or a
    no-transaction file holding an INSERT, and exited 0; the real run then exits 5."""
    from bridge_db.errors import ValidationFailed

    engine.migrate(db.target(), discover_migrations(migrations_copy))
    for body in ("SELEC broken;\n", NO_TX + "INSERT INTO workflow_steps DEFAULT VALUES;\n"):
        _add(migrations_copy, 7, body)
        with pytest.raises(ValidationFailed):
            engine.migrate(db.target(), discover_migrations(migrations_copy), dry_run=True)


# --------------------------------------------------------------------------- restore --overwrite reaches the environment's database


def test_restore_overwrite_replaces_the_database_the_environments_service_names(
    db_factory, migrations, tmp_path, monkeypatch
):
    """An environment connected through `service` (a documented connection key) has no `database` in
    environments.toml: restore --overwrite then replaced the database named in the backup's manifest,
    on that server, instead of the one the environment reaches (refreshing staging from a production
    backup renamed away whatever database bore production's name)."""
    from bridge_db.config import load_config
    from bridge_db.connection import resolve_target

    own, other = db_factory(), db_factory()
    engine.migrate(other.target(), migrations)
    made = backup.take_backup(other.target(), tmp_path / "b")  # a backup of `other` (another environment's)
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[r10_staging]\nhost=127.0.0.1\nport=5432\nuser=postgres\ndbname={own.name}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    config = tmp_path / "environments.toml"
    config.write_text('[environments.staging]\nservice = "r10_staging"\n')
    target = resolve_target(load_config(config), "staging")
    try:
        result = backup.restore_backup(target, target, made.path, overwrite=True, confirm=lambda q: True)
        assert result.database == own.name, f"replaced {result.database}, not the environment's {own.name}"
        assert _databases(other, other.name) == [other.name]
    finally:
        for name in _databases(own, own.name + "_%") + _databases(other, other.name + "_%"):
            drop_database(own.admin_dsn, name)


def test_reset_and_rollback_confirmations_name_the_database_a_service_reaches(db, migrations, tmp_path, monkeypatch):
    """The confirmation must name the database (issue 10, critical 1): through a service entry it said
    'database ?'."""
    from bridge_db.config import load_config
    from bridge_db.connection import resolve_target

    engine.migrate(db.target(), migrations)
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[r10_svc]\nhost=127.0.0.1\nport=5432\nuser=postgres\ndbname={db.name}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    config = tmp_path / "environments.toml"
    config.write_text(
        f'[defaults]\nmigrations_dir = "{MIGRATIONS_DIR}"\n'
        '[environments.shared]\nservice = "r10_svc"\nallow_reset = true\nrequire_confirmation = true\n'
    )
    target = resolve_target(load_config(config), "shared")
    asked: list[str] = []

    def no(question: str) -> bool:
        asked.append(question)
        return False

    from bridge_db.errors import RefusedByPolicy

    with pytest.raises(RefusedByPolicy):
        engine.reset_schema(target, confirm=no)
    with pytest.raises(RefusedByPolicy):
        engine.rollback(target, migrations, confirm=no)
    assert len(asked) == 2 and all(db.name in q for q in asked), asked


# --------------------------------------------------------------------------- an admin connection to another server


@pytest.fixture
def second_server(tmp_path_factory):
    """A throw-away cluster (trust auth, TCP on 127.0.0.1) on a port of its own: another server."""
    import shutil
    import subprocess
    import tempfile

    bindir = "/usr/lib/postgresql/15/bin"
    if not os.path.exists(f"{bindir}/initdb") or os.geteuid() != 0:
        pytest.skip("needs PostgreSQL 15's initdb and root (to run it as postgres)")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    port = 56320 + worker
    base = tempfile.mkdtemp(prefix="r10-second-")
    os.chmod(base, 0o777)
    data = os.path.join(base, "data")

    def as_postgres(*cmd):
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True)

    as_postgres(f"{bindir}/initdb", "-A", "trust", "-U", "postgres", "-D", data)
    as_postgres(
        f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(data, "log"),
        "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base}", "start",
    )  # fmt: skip
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def test_restore_overwrite_refuses_an_admin_connection_to_another_server(db, migrations, tmp_path, second_server):
    """The renames of restore --overwrite run on the admin connection's server: an --admin-dsn (or a
    leftover $BRIDGE_DB_ADMIN_DSN) to another server replaced that server's database of the same name,
    under the environment's policy, while the environment's own database stayed as it was."""
    from bridge_db.connection import admin_target
    from bridge_db.errors import BridgeDbError

    engine.migrate(db.target(), migrations)
    made = backup.take_backup(db.target(), tmp_path / "b")
    conn = psycopg2.connect(second_server)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{db.name}"')  # the other server's database of that name
    conn.close()
    admin = admin_target(db.target(), second_server)
    with pytest.raises(BridgeDbError) as refused:
        backup.restore_backup(db.target(), admin, made.path, overwrite=True, confirm=lambda q: True)
    assert refused.value.exit_code == 2, refused.value.message
    conn = psycopg2.connect(second_server)
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (db.name + "%",))
        assert [r[0] for r in cur.fetchall()] == [db.name], "the other server's database was swapped out"
    conn.close()


def test_an_admin_dsn_without_a_database_works_on_the_environments_database(db, migrations):
    """--admin-dsn "host=... user=postgres" (server and superuser, no dbname) made grant and
    setup-extensions work on libpq's default database (`postgres`), not the environment's: extensions
    created and privileges reconciled in the wrong database, the environment's left as it was."""
    from conftest import run_cli

    engine.migrate(db.target(), migrations)
    params = psycopg2.extensions.parse_dsn(db.admin_dsn)
    params.pop("dbname", None)
    admin = psycopg2.extensions.make_dsn(**params)
    out = run_cli("setup-extensions", "--check", "--json", "--dsn", db.dsn, "--admin-dsn", admin)
    assert out.returncode == 0, out.stderr
    assert "uuid-ossp" in __import__("json").loads(out.stdout)["present"], out.stdout


def test_a_backup_is_not_cancelled_by_a_database_level_statement_timeout(db, migrations, tmp_path):
    """ALTER DATABASE ... SET statement_timeout (common in production) applied to the backup's own row
    counts: a table whose count(*) takes longer (here: it waits 2 s for a lock a migration holds) made
    every `backup --verify-restore` fail, though pg_dump itself turns the timeout off."""
    import threading

    engine.migrate(db.target(), migrations)
    db.query(f"ALTER DATABASE {db.name} SET statement_timeout = '500ms'")
    holder = db.connect()
    holder.autocommit = False
    holder.cursor().execute("LOCK TABLE workflow_steps IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(2.0, holder.rollback)
    release.start()
    try:
        made = backup.take_backup(db.target(), tmp_path / "b", verify_restore=True)
        assert made.manifest.row_counts is not None
    finally:
        release.join()
        holder.close()


# --------------------------------------------------------------------------- the status file


@pytest.mark.parametrize("shape", ["fifo", "symlink"])
def test_the_status_file_never_replaces_something_that_is_not_a_regular_file(tmp_path, shape):
    """The marker is written beside and renamed over --status-file: a FIFO a monitor reads, a symlink
    into the monitoring folder (or, as root, a device such as /dev/full) was replaced by a regular file."""
    import stat as stat_module

    from conftest import run_cli

    status = tmp_path / "status.json"
    target = tmp_path / "monitoring.json"
    if shape == "fifo":
        os.mkfifo(status)
    else:
        target.write_text("{}")
        status.symlink_to(target)
    before = os.lstat(status)
    out = run_cli(
        "backup", "--dsn", "host=127.0.0.1 user=postgres dbname=postgres",
        "--backup-dir", str(tmp_path / "b"), "--status-file", str(status),
    )  # fmt: skip
    after = os.lstat(status)
    assert stat_module.S_IFMT(after.st_mode) == stat_module.S_IFMT(before.st_mode), "replaced by a regular file"
    assert out.returncode == 8 and "Traceback" not in out.stderr, out.stderr
