"""Issue 10 (part b): session state, the engine's own tables, splitting, no-transaction files, the
statement cache, the lock wait, grants, hints, role names, missing libraries and the folder's rules.
Each test failed on a291768 and passes now; all against real PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import uuid
import warnings
from pathlib import Path

import psycopg2
import pytest

from bridge_db import engine, inspection
from bridge_db.connection import LOCK_KEY
from bridge_db.discovery import MigrationFolderWarning, SqlFile, discover_migrations, scaffold_migration
from bridge_db.errors import UsageError, ValidationFailed
from bridge_db.privileges import declared_roles, reconcile_privileges

from catalog import bridge_tables
from conftest import create_database, drop_database, make_target, run_cli


def _add(folder: Path, number: int, forward: str, rollback: str = "SELECT 1;\n", name: str = "change") -> None:
    (folder / f"{number:03d}_{name}.sql").write_text(forward)
    (folder / f"{number:03d}_rollback_{name}.sql").write_text(rollback)


def _migrate(db, folder: Path, *args: str, env: dict | None = None):
    return run_cli("migrate", "--dsn", db.dsn, "--migrations-dir", str(folder), *args, env=env)


@pytest.fixture
def role(db):
    name = f"bridge_other_{uuid.uuid4().hex[:8]}"
    db.query(f"CREATE ROLE {name} NOLOGIN")
    yield name
    db.query(f"DROP OWNED BY {name}")
    db.query(f"DROP ROLE IF EXISTS {name}")


# --------------------------------------------------------------------------- session state


def test_search_path_and_role_set_by_one_migration_do_not_reach_the_next(db, migrations_copy, role):
    db.query(f"GRANT CREATE ON SCHEMA public TO {role}")
    _add(
        migrations_copy,
        7,
        "CREATE SCHEMA IF NOT EXISTS elsewhere;\n"
        "SET search_path = elsewhere;\n"
        f"GRANT CREATE, USAGE ON SCHEMA elsewhere TO {role};\n"
        f"SET ROLE {role};\n"
        "SELECT set_config('statement_timeout', '1', false);\n",
        "DROP SCHEMA IF EXISTS elsewhere CASCADE;\n",
        name="switch_session",
    )
    _add(migrations_copy, 8, "CREATE TABLE IF NOT EXISTS t8 (id int);\n", "DROP TABLE IF EXISTS t8;\n", name="t8")
    out = _migrate(db, migrations_copy)
    assert out.returncode == 0, out.stderr
    # Where 008 alone would have put it, owned by who runs the migrations, under no 1 ms timeout.
    assert db.query("SELECT to_regclass('public.t8') IS NOT NULL, to_regclass('elsewhere.t8')") == [(True, None)]
    assert db.query("SELECT tableowner = current_user FROM pg_tables WHERE tablename = 't8'") == [(True,)]
    assert inspection.verify(db.target(), discover_migrations(migrations_copy)).ok


def test_a_migration_in_a_single_transaction_run_starts_from_the_same_state(db, migrations_copy):
    _add(migrations_copy, 7, "CREATE SCHEMA IF NOT EXISTS elsewhere;\nSET search_path = elsewhere;\n", name="sp")
    _add(migrations_copy, 8, "CREATE TABLE IF NOT EXISTS t8 (id int);\n", "DROP TABLE IF EXISTS t8;\n", name="t8")
    out = _migrate(db, migrations_copy, "--single-transaction")
    assert out.returncode == 0, out.stderr
    assert db.query("SELECT to_regclass('public.t8') IS NOT NULL") == [(True,)]


def test_the_reset_keeps_what_the_driver_needs_and_the_databases_own_defaults(db, migrations_copy):
    """RESET ALL returns to the session's defaults: ALTER DATABASE ... SET values stay, and the ISO
    date style psycopg2 sets at connect is set again, so history timestamps still read back."""
    db.query(f"ALTER DATABASE \"{db.name}\" SET datestyle = 'SQL, DMY'")
    db.query(f"ALTER DATABASE \"{db.name}\" SET bridge_test.marker = 'db-default'")
    _add(
        migrations_copy,
        7,
        "SELECT set_config('bridge_test.marker', 'changed by 007', false);\n",
        name="marker",
    )
    _add(
        migrations_copy,
        8,
        "CREATE TABLE IF NOT EXISTS t8 AS SELECT current_setting('bridge_test.marker') AS marker;\n",
        "DROP TABLE IF EXISTS t8;\n",
        name="t8",
    )
    out = _migrate(db, migrations_copy)
    assert out.returncode == 0, out.stderr
    assert db.query("SELECT marker FROM t8") == [("db-default",)]
    out = _migrate(db, migrations_copy, "--json")  # reads the history's timestamps after the reset
    assert out.returncode == 0 and json.loads(out.stdout)["head_after"] == 8, out.stderr


# --------------------------------------------------------------------------- the engine's own tables


def test_emptied_search_path_does_not_break_the_history_write(db, migrations_copy):
    _add(
        migrations_copy,
        7,
        "SELECT set_config('search_path', '', false);\nCREATE TABLE IF NOT EXISTS public.t7 (id int);\n",
        "DROP TABLE IF EXISTS public.t7;\n",
    )
    out = _migrate(db, migrations_copy)
    assert out.returncode == 0, out.stderr
    assert db.query("SELECT max(version) FROM public.schema_migrations") == [(7,)]


def test_another_tools_schema_migrations_table_is_the_engines_problem_not_the_files(db):
    db.query("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY)")  # as dbmate creates it
    db.query("INSERT INTO schema_migrations VALUES ('20240101000000')")
    out = run_cli("migrate", "--dsn", db.dsn)
    assert out.returncode == 10, out.stderr
    assert "not bridge-db's history" in out.stderr and "dbmate" in out.stderr
    assert "fix the SQL" not in out.stderr and "Traceback" not in out.stderr
    assert bridge_tables(db.connect()) == []
    assert db.query("SELECT to_regclass('public.schema_migrations_log')") == [(None,)]  # nothing created beside it
    assert db.query("SELECT * FROM schema_migrations") == [("20240101000000",)]
    for verb in ("status", "verify"):
        assert run_cli(verb, "--dsn", db.dsn).returncode == 10


def test_a_failed_history_write_is_reported_as_the_engines_with_its_own_exit_code(db, migrations_copy):
    out = _migrate(db, migrations_copy)
    assert out.returncode == 0, out.stderr
    db.query(
        "CREATE FUNCTION public.no_history() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'history is frozen'; END$$"
    )
    db.query(
        "CREATE TRIGGER no_history BEFORE INSERT ON public.schema_migrations "
        "FOR EACH ROW EXECUTE FUNCTION public.no_history()"
    )
    _add(migrations_copy, 7, "CREATE TABLE IF NOT EXISTS t7 (id int);\n", "DROP TABLE IF EXISTS t7;\n")
    out = _migrate(db, migrations_copy)
    assert out.returncode == 10, out.stderr
    assert "could not write its history" in out.stderr and "history is frozen" in out.stderr
    assert "fix the SQL" not in out.stderr
    assert db.query("SELECT to_regclass('public.t7')") == [(None,)]  # rolled back with it


def test_history_tables_from_before_rollback_checksums_are_upgraded_and_keep_working(db, migrations_copy):
    migrations = discover_migrations(migrations_copy)
    engine.migrate(db.target(), migrations, to_version=3)
    db.query("ALTER TABLE schema_migrations DROP COLUMN rollback_checksum")  # as a291768 created it
    assert inspection.status(db.target(), migrations).problems == []  # read-only verbs do not need the column
    assert inspection.verify(db.target(), migrations).ok
    engine.migrate(db.target(), migrations)
    rows = db.query("SELECT version, rollback_checksum FROM schema_migrations ORDER BY version")
    assert [r[1] for r in rows[:3]] == [None] * 3  # not known for what was applied before
    assert [r[1] for r in rows[3:]] == [m.rollback_checksum for m in migrations[3:]]


# --------------------------------------------------------------------------- rollback checksums, verify


def test_an_edited_rollback_file_of_an_applied_migration_is_reported(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    rollback = next(migrations_copy.glob("005_rollback_*.sql"))
    rollback.write_text(rollback.read_text() + "\nDROP TABLE IF EXISTS workflow_executions CASCADE;\n")
    out = run_cli("status", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 5 and rollback.name in out.stdout + out.stderr
    out = run_cli("rollback", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy), "--to", "0")
    assert out.returncode == 5 and f"{rollback.name} was changed after its migration was applied" in out.stderr
    assert len(bridge_tables(db.connect())) == 6
    assert not inspection.verify(db.target(), discover_migrations(migrations_copy)).ok


def test_verify_reports_objects_that_no_applied_migration_declares(db, migrations):
    engine.migrate(db.target(), migrations)
    assert inspection.verify(db.target(), migrations).ok  # the real schema: nothing extra
    db.query("CREATE TABLE public.stray (id int)")
    db.query("ALTER TABLE workflow_steps ADD COLUMN hand_made int")
    db.query("CREATE INDEX idx_by_hand ON workflow_steps (hand_made)")
    report = inspection.verify(db.target(), migrations)
    assert not report.ok
    assert "table public.stray is not declared by any applied migration" in report.problems
    assert "column workflow_steps.hand_made (integer) is not declared by the migrations" in report.problems
    assert (
        "index idx_by_hand on workflow_steps is not declared by the migrations: USING btree (hand_made)"
        in report.problems
    )
    assert run_cli("verify", "--dsn", db.dsn).returncode == 5


def test_verify_in_both_directions_accepts_partitions_and_tables_built_from_others(db, migrations_copy):
    _add(
        migrations_copy,
        7,
        "CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);\n"
        "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');\n"
        "CREATE INDEX idx_events_at ON events (at);\n"
        "CREATE TABLE events_copy (LIKE events);\n",
        "DROP TABLE events_copy, events;\n",
    )
    migrations = discover_migrations(migrations_copy)
    engine.migrate(db.target(), migrations)
    assert inspection.verify(db.target(), migrations).problems == []
    db.query("ALTER TABLE events_copy DROP COLUMN at")  # the replay knows a LIKE table's columns too
    db.query("DROP TABLE events_2026")
    assert inspection.verify(db.target(), migrations).problems == [
        "table events_2026 is missing (declared by an applied migration)",
        "column events_copy.at is missing (the migrations declare date)",
    ]


# --------------------------------------------------------------------------- splitting and parsing


def test_a_large_file_is_split_into_every_statement_with_its_line(tmp_path):
    parts = ["-- header\n"]
    for i in range(20_000):
        if i % 1000 == 0:
            parts.append(f"DO $$\nBEGIN\n  -- a comment; with a semicolon\n  PERFORM {i};\nEND\n$$;\n")
        else:
            parts.append(f"INSERT INTO t (id, note) VALUES ({i}, 'é; {i}');\n")
    text = "".join(parts)
    path = tmp_path / "001_big.sql"
    path.write_text(text, encoding="utf-8")
    statements = SqlFile(path, path.read_bytes()).statements
    assert len(statements) == 20_000
    lines = text.split("\n")
    for statement in statements[::997] + statements[-3:]:
        assert lines[statement.line - 1].startswith(statement.sql.split("\n")[0])
    assert statements[-1].sql == "INSERT INTO t (id, note) VALUES (19999, 'é; 19999')"


def test_files_are_parsed_before_waiting_for_the_lock(db, migrations_copy):
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    _add(migrations_copy, 7, "CREATE TABLE t7 (id int;\n")
    holder = db.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        out = _migrate(db, migrations_copy, "--lock-wait", "0")
    finally:
        holder.close()
    assert out.returncode == 5, out.stderr  # the syntax error, not "lock not acquired" (4)
    assert "007_change.sql:1" in out.stderr


# --------------------------------------------------------------------------- no-transaction files


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO fsm_transitions (entity_id, entity_type, to_state, transition_event) "
        "VALUES (uuid_generate_v4(), 'workflow', 'PENDING', 'created')",
        "UPDATE node_registrations SET health_status = 'healthy'",
        "CREATE TABLE IF NOT EXISTS t (id int)",
        "SELECT 1",
        "CREATE INDEX CONCURRENTLY ON workflow_steps (status)",  # unnamed: a repeat would build a second one
    ],
)
def test_a_no_transaction_file_may_hold_only_statements_safe_to_repeat(db, migrations_copy, statement):
    _add(
        migrations_copy,
        7,
        "-- bridge:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i7 ON workflow_steps (status);\n"
        + statement
        + ";\n",
    )
    out = _migrate(db, migrations_copy)
    assert out.returncode == 5, out.stderr
    assert "007_change.sql:3" in out.stderr and "no-transaction" in out.stderr
    assert bridge_tables(db.connect()) == []  # refused before 001..006 ran


def test_a_no_transaction_statement_repeated_after_a_kill_changes_nothing(db, migrations_copy):
    """A kill between a statement and its progress row is simulated by doing the statement's work
    without the row: the rerun must find the work done, not fail or do it twice."""
    engine.migrate(db.target(), discover_migrations(migrations_copy))
    db.query("CREATE TYPE mood AS ENUM ('calm')")
    db.query("CREATE INDEX old_idx ON workflow_steps (step_name)")
    _add(
        migrations_copy,
        7,
        "-- bridge:no-transaction\n"
        "CREATE INDEX CONCURRENTLY idx_ws_started ON workflow_steps (created_at);\n"
        "ALTER TYPE mood ADD VALUE 'tense';\n"
        "DROP INDEX CONCURRENTLY old_idx;\n"
        "CREATE INDEX CONCURRENTLY idx_ws_completed ON workflow_steps (execution_time_ms);\n",
    )
    db.query("CREATE INDEX idx_ws_started ON workflow_steps (created_at)")  # statement 1 ran, then the kill
    db.query("ALTER TYPE mood ADD VALUE 'tense'")  # statement 2 too, in another attempt
    db.query("DROP INDEX old_idx")  # and statement 3
    out = _migrate(db, migrations_copy)
    assert out.returncode == 0, out.stderr
    assert db.query("SELECT count(*) FROM pg_enum WHERE enumtypid = 'mood'::regtype") == [(2,)]
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_ws_completed'::regclass") == [(True,)]
    assert db.query("SELECT max(version) FROM schema_migrations") == [(7,)]


# --------------------------------------------------------------------------- the statement cache


def test_a_poisoned_statement_cache_entry_never_runs(db, migrations_copy, tmp_path):
    """a291768 ran the statements cached under a file's checksum; now only the file's bytes count."""
    from importlib.metadata import version

    cache = tmp_path / "cache"
    first = discover_migrations(migrations_copy)[0]
    entry = cache / f"statements-pglast-{version('pglast')}" / f"{first.forward.checksum}.json"
    entry.parent.mkdir(parents=True)
    entry.write_text(
        json.dumps(
            [
                {
                    "sql": "CREATE TABLE poisoned (id int)",
                    "line": 1,
                    "kind": "CreateStmt",
                    "concurrent_index": None,
                    "relations": [],
                }
            ]
        )  # fmt: skip
    )
    out = _migrate(db, migrations_copy, env={"BRIDGE_DB_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr
    assert db.query("SELECT to_regclass('public.poisoned')") == [(None,)]
    assert len(bridge_tables(db.connect())) == 6


# --------------------------------------------------------------------------- the lock wait


def test_a_database_statement_timeout_does_not_cut_the_lock_wait_short(db):
    db.query(f'ALTER DATABASE "{db.name}" SET statement_timeout = 200')
    holder = db.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("SET statement_timeout = 0")
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", "1")
    finally:
        holder.close()
    assert out.returncode == 4, out.stderr
    assert "holds the lock" in out.stderr and "waited 1s" in out.stderr


def test_the_lock_holder_report_names_only_sessions_of_this_database(db, admin_dsn):
    other = create_database(admin_dsn, with_extensions=())
    here, there = db.connect(), other.connect()
    try:
        pids = {}
        for name, conn in (("here", here), ("there", there)):
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s), pg_backend_pid()", (LOCK_KEY,))
                pids[name] = cur.fetchone()[1]
        out = run_cli("migrate", "--dsn", db.dsn, "--lock-wait", "0", "--json")
    finally:
        here.close()
        there.close()
        drop_database(admin_dsn, other.name)
    assert out.returncode == 4
    holders = json.loads(out.stdout)["holders"]
    assert [h["pid"] for h in holders] == [pids["here"]]


# --------------------------------------------------------------------------- grant


@pytest.fixture
def roles(db):
    suffix = uuid.uuid4().hex[:8]
    names = {"app_role": f"bridge_app_{suffix}", "readonly_role": f"bridge_ro_{suffix}"}
    yield names
    for name in names.values():
        db.query(f"DROP OWNED BY {name}")
        db.query(f"DROP ROLE IF EXISTS {name}")


def test_grant_by_a_role_without_grant_options_fails_and_says_what_was_not_granted(db, roles, role, migrations):
    target = db.target(**roles)
    engine.migrate(target, migrations)
    reconcile_privileges(target, declared_roles(target))  # everything in place ...
    db.query(f"REVOKE SELECT ON workflow_steps FROM {roles['readonly_role']}")  # ... but one grant
    db.query(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")  # the admin holds it, without grant option
    acl = "SELECT relacl::text FROM pg_class WHERE oid = 'workflow_steps'::regclass"
    before = db.query(acl)
    weak = make_target(db.dsn + f" options='-c role={role}'", **roles)
    with pytest.raises(Exception) as failure:
        reconcile_privileges(weak, declared_roles(target))
    assert failure.value.exit_code == 7
    assert "had no effect" in failure.value.message and "workflow_steps" in failure.value.message
    assert db.query(acl) == before


def test_grant_names_every_object_with_its_schema(db, roles, migrations):
    target = db.target(**roles)
    engine.migrate(target, migrations)
    db.query("CREATE SCHEMA shadow")
    db.query("CREATE TABLE shadow.workflow_steps (id int)")
    db.query(f'ALTER DATABASE "{db.name}" SET search_path = shadow, public')
    report = reconcile_privileges(target, declared_roles(target))
    assert report.changed
    assert all('"public".' in c.statement for c in report.changes if " ON TABLE " in c.statement)
    granted = "SELECT has_table_privilege(%s, %s, 'SELECT')"
    assert db.query(granted, (roles["readonly_role"], "public.workflow_steps")) == [(True,)]
    assert db.query(granted, (roles["readonly_role"], "shadow.workflow_steps")) == [(False,)]
    assert not reconcile_privileges(target, declared_roles(target), check=True).changed


@pytest.mark.parametrize("name", ["public", "none", "pg_monitor", "pg_read_all_data", "current_user"])
def test_reserved_role_names_are_refused_before_anything_runs(db, name, tmp_path):
    with pytest.raises(UsageError, match="reserved"):
        declared_roles(db.target(app_role=name))
    config = tmp_path / "environments.toml"
    config.write_text(f'[environments.dev]\ndatabase = "{db.name}"\nreadonly_role = "{name}"\n')
    out = run_cli("grant", "--dsn", db.dsn, env={"BRIDGE_DB_CONFIG": str(config)})
    assert out.returncode == 2 and "reserved" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- extension hints and libraries


def test_a_directive_value_that_is_not_an_extension_name_is_refused_at_discovery(db, migrations_copy, tmp_path):
    marker = tmp_path / "pwned"
    _add(migrations_copy, 7, f"-- bridge:requires-extension x'; touch {marker}; '\nSELECT 1;\n")
    out = _migrate(db, migrations_copy)
    assert out.returncode == 5 and "007_change.sql:1" in out.stderr, out.stderr
    assert "touch" not in out.stderr.split("next:")[-1]
    assert not marker.exists() and bridge_tables(db.connect()) == []


def test_the_missing_extension_hint_is_one_safe_shell_command(admin_dsn):
    name = f"bridge test'{uuid.uuid4().hex[:6]}; touch x"
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(psycopg2.sql.Identifier(name)))
    conn.close()
    try:
        from conftest import dsn_for

        out = run_cli("migrate", "--dsn", dsn_for(admin_dsn, name), "--json")
        assert out.returncode == 7
        hint = json.loads(out.stdout)["next_step"]
        command = shlex.split(hint.split("run: ", 1)[1])
        assert command == ["psql", "-d", name, "-c", 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";']
    finally:
        drop_database(admin_dsn, name)


def test_the_create_database_hint_is_shell_quoted(admin_dsn):
    from conftest import dsn_for

    name = f"no such'db; touch x {uuid.uuid4().hex[:6]}"
    out = run_cli("status", "--dsn", dsn_for(admin_dsn, name), "--json")
    assert out.returncode == 3
    hint = json.loads(out.stdout)["next_step"]
    assert shlex.split(hint.split("(", 1)[1].split(")", 1)[0]) == ["createdb", name]


@pytest.fixture
def extension_without_library(db):
    """An extension whose shared library is not installed, as on a host without libossp-uuid16."""
    sharedir = Path(db.query("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'")[0][0]) / "extension"
    if not os.access(sharedir, os.W_OK):
        pytest.skip(f"cannot write the server's extension folder {sharedir}")
    name = f"bridge_nolib_{uuid.uuid4().hex[:8]}"
    files = [sharedir / f"{name}.control", sharedir / f"{name}--1.0.sql"]
    files[0].write_text(f"default_version = '1.0'\nmodule_pathname = '$libdir/{name}'\nrelocatable = true\n")
    files[1].write_text(f"CREATE FUNCTION {name}() RETURNS int AS 'MODULE_PATHNAME', '{name}' LANGUAGE C;\n")
    try:
        yield name
    finally:
        for file in files:
            file.unlink(missing_ok=True)


def test_an_extension_whose_library_is_missing_is_exit_7_with_what_to_install(
    db, migrations_copy, tmp_path, extension_without_library
):
    name = extension_without_library
    config = tmp_path / "environments.toml"
    config.write_text(f'[environments.dev]\ndatabase = "{db.name}"\nextensions = ["{name}"]\n')
    out = run_cli("setup-extensions", "--dsn", db.dsn, env={"BRIDGE_DB_CONFIG": str(config)})
    assert out.returncode == 7, out.stderr
    assert f"cannot load $libdir/{name}" in out.stderr and "install" in out.stderr and "Traceback" not in out.stderr
    _add(migrations_copy, 7, f'CREATE EXTENSION IF NOT EXISTS "{name}";\n')
    engine.migrate(db.target(), discover_migrations(migrations_copy), to_version=6)
    out = _migrate(db, migrations_copy)
    assert out.returncode == 7 and "007_change.sql:1" in out.stderr and "fix the SQL" not in out.stderr


# --------------------------------------------------------------------------- the folder's rules


def test_unicode_digits_are_not_migration_numbers(migrations_copy):
    _add(migrations_copy, 7, "SELECT 1;\n")
    (migrations_copy / "007_change.sql").rename(migrations_copy / "٠٠٧_change.sql")
    with pytest.raises(ValidationFailed, match="unexpected file"):
        discover_migrations(migrations_copy)


@pytest.mark.parametrize("body", ["", "\n\n", "-- nothing yet\n/* still /* nothing */ */\n;\n"])
def test_empty_or_comment_only_files_are_refused(db, migrations_copy, body):
    _add(migrations_copy, 7, body)
    with pytest.raises(ValidationFailed, match="007_change.sql: has no SQL statement"):
        discover_migrations(migrations_copy)
    out = _migrate(db, migrations_copy)
    assert out.returncode == 5 and bridge_tables(db.connect()) == []
    _add(migrations_copy, 7, "SELECT 1;\n", body)  # a rollback that does nothing is refused as well
    with pytest.raises(ValidationFailed, match="007_rollback_change.sql: has no SQL statement"):
        discover_migrations(migrations_copy)


def test_version_000_says_numbers_start_at_001(migrations_copy):
    _add(migrations_copy, 0, "SELECT 1;\n", name="zero")
    with pytest.raises(ValidationFailed, match="000_zero.sql: migration numbers start at 001"):
        discover_migrations(migrations_copy)


def test_hidden_files_in_the_folder_are_named_in_a_warning(db, migrations_copy):
    (migrations_copy / ".007_change.sql.swp").write_bytes(b"\x00vim swap")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(discover_migrations(migrations_copy)) == 6
    assert any(
        issubclass(w.category, MigrationFolderWarning) and ".007_change.sql.swp" in str(w.message) for w in caught
    )
    out = run_cli("status", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 0 and "warning:" in out.stderr and ".007_change.sql.swp" in out.stderr


def test_parallel_new_never_creates_duplicate_numbers(migrations_copy):
    context = multiprocessing.get_context("fork")  # children inherit the barrier
    count = 8
    barrier = context.Barrier(count)

    def scaffold(i: int) -> None:
        barrier.wait()
        scaffold_migration(migrations_copy, f"change_{i}")

    workers = [context.Process(target=scaffold, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * count
    numbers = sorted(p.name[:3] for p in migrations_copy.glob("*_change_*.sql") if "_rollback_" not in p.name)
    assert numbers == [f"{v:03d}" for v in range(7, 7 + count)]
    assert len(discover_migrations(migrations_copy, allow_empty=True)) == 6 + count


def test_a_foreign_object_in_the_way_of_the_history_bootstrap_is_the_engines_error(db):
    db.query("CREATE VIEW schema_migrations_progress AS SELECT 1 AS x")  # someone else's, with our name
    out = run_cli("migrate", "--dsn", db.dsn)
    assert out.returncode == 10, out.stderr
    assert "history tables" in out.stderr and "Traceback" not in out.stderr and "report it" not in out.stderr
    assert bridge_tables(db.connect()) == []
