"""Review 9: faults found in verify's replay (schema_diff) and the adoption script.

Each test is a minimal reproduction: it failed on main at c3419f0.
"""

from __future__ import annotations

import pytest

from bridge_db import engine, inspection
from bridge_db.discovery import discover_migrations


def _with_007(folder, forward: str, rollback: str):
    (folder / "007_review.sql").write_text(forward)
    (folder / "007_rollback_review.sql").write_text(rollback)
    return discover_migrations(folder)


def test_verify_still_compares_a_table_that_a_later_migration_renamed(db, migrations_copy):
    """The replay listed only the names CREATE TABLE used, so a renamed table fell out of the reference:
    a dropped column (even a dropped index) on it was reported "ok" with definitions compared.
    """
    migrations = _with_007(
        migrations_copy,
        "ALTER TABLE fsm_transitions RENAME TO state_transitions;\n",
        "ALTER TABLE state_transitions RENAME TO fsm_transitions;\n",
    )
    engine.migrate(db.target(), migrations)
    assert inspection.verify(db.target(), migrations).ok
    db.query("ALTER TABLE state_transitions DROP COLUMN transition_data")
    report = inspection.verify(db.target(), migrations)
    assert not report.ok
    assert any("transition_data" in p for p in report.problems), report.problems


def test_verify_never_moves_a_live_sequence(db, migrations_copy):
    """A statement that names no table (here SELECT setval on a schema-qualified sequence) was replayed
    against the real database; setval is not transactional, so verify's ROLLBACK did not undo it and
    the next INSERT failed with a duplicate key."""
    migrations = _with_007(
        migrations_copy,
        "CREATE TABLE IF NOT EXISTS review_counter (id serial PRIMARY KEY);\n"
        "SELECT setval('public.review_counter_id_seq', 1000);\n",
        "DROP TABLE IF EXISTS review_counter;\n",
    )
    engine.migrate(db.target(), migrations)
    for _ in range(5):
        db.query("INSERT INTO review_counter DEFAULT VALUES")
    inspection.verify(db.target(), migrations)
    assert db.query("SELECT last_value FROM review_counter_id_seq") == [(1005,)]
    db.query("INSERT INTO review_counter DEFAULT VALUES")  # no duplicate key


def test_verify_does_not_run_a_do_block_against_live_tables(db, migrations_copy):
    """A DO block has no table name the replay could check: it altered the live table (under an ACCESS
    EXCLUSIVE lock) instead of the temporary copy, then reported the column as undeclared.
    """
    migrations = _with_007(
        migrations_copy,
        "DO $$ BEGIN ALTER TABLE public.workflow_steps ADD COLUMN IF NOT EXISTS note text; END $$;\n",
        "ALTER TABLE workflow_steps DROP COLUMN IF EXISTS note;\n",
    )
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok, report.problems
    db.query("ALTER TABLE workflow_steps DROP COLUMN note")
    report = inspection.verify(db.target(), migrations)
    # names only cannot see inside the DO block, but verify must not claim it compared definitions
    assert not report.ok or report.compared == "names"


def test_verify_after_an_idempotent_do_block_reports_no_false_difference(db, migrations_copy):
    """The usual "add the column if information_schema lacks it" block saw the live column during the
    replay, skipped the temporary copy, and verify failed a correctly migrated database.
    """
    migrations = _with_007(
        migrations_copy,
        "DO $$ BEGIN\n"
        "  IF NOT EXISTS (SELECT 1 FROM information_schema.columns\n"
        "                 WHERE table_name = 'node_registrations' AND column_name = 'zone') THEN\n"
        "    ALTER TABLE node_registrations ADD COLUMN zone text;\n"
        "  END IF;\n"
        "END $$;\n",
        "ALTER TABLE node_registrations DROP COLUMN IF EXISTS zone;\n",
    )
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok, report.problems


def test_verify_with_a_schema_qualified_create_table_returns_a_report(db, migrations_copy):
    """CREATE TABLE public.x was replayed (into the real schema) and then looked up as
    'pg_temp.public.x': verify aborted with "cross-database references are not implemented".
    """
    migrations = _with_007(
        migrations_copy,
        "CREATE TABLE IF NOT EXISTS public.review_extra (id int PRIMARY KEY, v text NOT NULL);\n",
        "DROP TABLE IF EXISTS public.review_extra;\n",
    )
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok, report.problems


def test_verify_reports_a_missing_table_created_after_set_search_path(db, migrations_copy):
    """After SET search_path the replay created the table in the real schema (rolled back), not in
    pg_temp; the table silently left the reference and its loss was reported as "ok"."""
    migrations = _with_007(
        migrations_copy,
        "SET search_path = public;\nCREATE TABLE IF NOT EXISTS review_extra2 (id int PRIMARY KEY);\n",
        "DROP TABLE IF EXISTS review_extra2;\n",
    )
    engine.migrate(db.target(), migrations)
    assert inspection.verify(db.target(), migrations).ok
    db.query("DROP TABLE review_extra2")
    report = inspection.verify(db.target(), migrations)
    assert not report.ok
    assert any("review_extra2" in p for p in report.problems), report.problems


def test_verify_replay_does_not_drop_a_live_index_the_files_did_not_create(db, migrations_copy):
    """DROP INDEX IF EXISTS of an index that exists only in the live schema (made by hand, or by the
    application) was replayed against the live index: an ACCESS EXCLUSIVE lock on the live table.
    """
    migrations = _with_007(
        migrations_copy,
        "DROP INDEX IF EXISTS idx_review_by_hand;\n",
        "SELECT 1;\n",
    )
    engine.migrate(db.target(), migrations, to_version=6)
    db.query("CREATE INDEX idx_review_by_hand ON workflow_steps (step_name)")
    engine.migrate(db.target(), migrations)  # drops it
    db.query("CREATE INDEX idx_review_by_hand ON workflow_steps (step_name)")  # someone adds it back
    # a reader holds ACCESS SHARE on workflow_steps: a replay that takes ACCESS EXCLUSIVE waits on it
    reader = db.connect()
    reader.autocommit = False
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM workflow_steps")
    try:
        report = inspection.verify(db.target(), migrations)
    finally:
        reader.rollback()
        reader.close()
    assert report.compared == "definitions", report.note
    assert any("idx_review_by_hand" in p for p in report.problems), report.problems


def test_verify_sees_a_lost_identity_and_a_changed_collation(db, migrations_copy):
    """Columns were compared by format_type and pg_attrdef only: a column that lost GENERATED ... AS
    IDENTITY (every INSERT without an id now fails NOT NULL) or gained COLLATE "C" was reported "ok"."""
    migrations = _with_007(
        migrations_copy,
        "CREATE TABLE IF NOT EXISTS review_ids (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);\n",
        "DROP TABLE IF EXISTS review_ids;\n",
    )
    engine.migrate(db.target(), migrations)
    assert inspection.verify(db.target(), migrations).ok
    db.query("ALTER TABLE review_ids ALTER COLUMN id DROP IDENTITY")
    db.query('ALTER TABLE node_registrations ALTER COLUMN node_type TYPE varchar(100) COLLATE "C"')
    problems = inspection.verify(db.target(), migrations).problems
    assert any("review_ids.id" in p and "IDENTITY" in p for p in problems), problems
    assert any("node_registrations.node_type" in p and "COLLATE" in p for p in problems), problems


def test_the_adoption_script_leaves_a_project_built_database_indexes_alone(db, migrations):
    """On a database the project's migrations built, the script dropped and rebuilt six of its indexes
    (DROP INDEX takes ACCESS EXCLUSIVE on the table, held to the end of the -1 transaction): on a big
    table, minutes in which nobody could even read it. It must be harmless there."""
    from conftest import ROOT

    engine.migrate(db.target(), migrations)
    db.query(
        "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace, started_at) "
        "SELECT uuid_generate_v4(), 't', 'ns', now() FROM generate_series(1, 1000)"
    )
    files = "SELECT relname, relfilenode FROM pg_class WHERE relkind = 'i' AND relname LIKE 'idx_%' ORDER BY 1"
    before = db.query(files)
    db.psql("-1", "-f", str(ROOT / "scripts" / "adopt_application_v1.sql"))
    assert db.query(files) == before
    assert inspection.verify(db.target(), migrations).ok


def test_verify_compares_a_table_whose_name_needs_quotes(db, migrations_copy):
    """Names were looked up unquoted: a table "AuditLog" was never compared on main (to_regclass folded
    it to auditlog, so it left the reference) and its loss went unreported."""
    migrations = _with_007(
        migrations_copy,
        'CREATE TABLE IF NOT EXISTS "AuditLog" (id int PRIMARY KEY, "Note" text NOT NULL);\n',
        'DROP TABLE IF EXISTS "AuditLog";\n',
    )
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok and report.compared == "definitions", (report.problems, report.note)
    db.query('ALTER TABLE "AuditLog" ALTER COLUMN "Note" DROP NOT NULL')
    report = inspection.verify(db.target(), migrations)
    assert any("AuditLog.Note" in p for p in report.problems), report.problems


def test_verify_reports_an_index_left_invalid_by_a_failed_concurrent_rebuild(db, migrations_copy):
    """A concurrent (re)build that fails leaves an INVALID index with the declared name and definition:
    it enforces nothing and serves no query, and verify said "ok"."""
    import psycopg2

    migrations = _with_007(
        migrations_copy,
        "CREATE UNIQUE INDEX IF NOT EXISTS uq_review_step_name ON workflow_steps (step_name);\n",
        "DROP INDEX IF EXISTS uq_review_step_name;\n",
    )
    engine.migrate(db.target(), migrations)
    db.query("DROP INDEX uq_review_step_name")  # a rebuild: drop, then create concurrently
    db.query(
        "INSERT INTO workflow_executions (id, correlation_id, workflow_type, namespace) "
        "VALUES ('11111111-1111-4111-8111-111111111111', uuid_generate_v4(), 't', 'ns')"
    )
    db.query(
        "INSERT INTO workflow_steps (workflow_id, step_name, step_order) "
        "SELECT '11111111-1111-4111-8111-111111111111', 'dup', g FROM generate_series(1, 2) g"
    )
    with pytest.raises(psycopg2.errors.UniqueViolation):
        db.query("CREATE UNIQUE INDEX CONCURRENTLY uq_review_step_name ON workflow_steps (step_name)")
    report = inspection.verify(db.target(), migrations)
    assert any("uq_review_step_name" in p and "INVALID" in p for p in report.problems), report.problems


def test_the_replay_refuses_a_session_that_already_has_temporary_tables(db, migrations):
    """Through a pooler a session may carry temporary tables: one named like a migration's table made
    CREATE TABLE IF NOT EXISTS keep it, and the stranger's table became the reference."""
    from bridge_db import schema_diff

    engine.migrate(db.target(), migrations)
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE workflow_executions (LIKE public.workflow_executions INCLUDING ALL)")
            cur.execute("ALTER TABLE workflow_executions DROP COLUMN error_message")
        try:
            reference = schema_diff.reference_tables(conn, migrations)
        except schema_diff.ReferenceUnavailable:
            return
    finally:
        conn.close()
    assert "error_message" in reference["workflow_executions"].columns, "the stranger's table became the reference"


def test_a_completion_stamped_by_a_clock_behind_the_starter_is_accepted(db, migrations):
    """The application takes started_at and completed_at from its callers' clocks (the adapter's INSERT
    $5 and UPDATE $2; persistence.create_workflow_execution defaults started_at to now() while taking
    completed_at as given). Its schema accepts completed_at < started_at; the project's CHECK refuses
    the completion, and the row stays PROCESSING."""
    engine.migrate(db.target(), migrations)
    db.query(
        "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, namespace, started_at, "
        "metadata) VALUES ('44444444-4444-4444-8444-444444444444', 'metadata_stamping', 'PROCESSING', "
        "'production', '2026-11-29 12:00:00.005+00', '{}')"
    )
    db.query(
        "UPDATE workflow_executions SET current_state = 'COMPLETED', completed_at = '2026-11-29 12:00:00.002+00', "
        "execution_time_ms = 2, error_message = NULL, metadata = '{}', updated_at = NOW() "
        "WHERE correlation_id = '44444444-4444-4444-8444-444444444444'"
    )


def test_verify_compares_definitions_when_extensions_live_in_their_own_schema(bare_db, migrations):
    """The replay replaced the search_path with "pg_temp, public": where uuid-ossp is installed in an
    `extensions` schema on the database's path (a common layout), migrate works but verify could not
    replay 001 and silently compared names only."""
    bare_db.query('CREATE SCHEMA extensions; CREATE EXTENSION "uuid-ossp" SCHEMA extensions')
    bare_db.query(f'ALTER DATABASE {bare_db.name} SET search_path = "$user", public, extensions')
    engine.migrate(bare_db.target(), migrations)
    report = inspection.verify(bare_db.target(), migrations)
    assert report.ok and report.compared == "definitions", (report.problems, report.note)


def test_the_release_wheel_carries_the_adoption_script():
    """The wheel (and so the offline bundle `invoke dist` writes) carries migrations/ and its README, whose
    adoption procedure runs scripts/adopt_application_v1.sql; the script itself is not package data, so
    a host installed from the bundle cannot follow the procedure."""
    import tomllib

    from conftest import ROOT

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped_dirs = {ROOT / "src" / p.replace(".", "/") for p in setuptools["packages"]} | {
        ROOT / d for d in setuptools.get("package-dir", {}).values() if d != "src"
    }
    assert (ROOT / "scripts") in shipped_dirs


def test_a_failing_verify_says_when_it_compared_names_only(db, migrations_copy):
    """The note that the replay was impossible (so types, defaults and constraints went unchecked) was
    printed only with "ok"; a failing verify listed its problems as if they were all there was."""
    from conftest import run_cli

    migrations = _with_007(
        migrations_copy,
        "DO $$ BEGIN PERFORM 1; END $$;\n",
        "SELECT 1;\n",
    )
    engine.migrate(db.target(), migrations)
    db.query("DROP INDEX idx_workflow_steps_status")
    out = run_cli("verify", "--dsn", db.dsn, "--migrations-dir", str(migrations_copy))
    assert out.returncode == 5, out.stderr
    assert "idx_workflow_steps_status" in out.stderr and "only names are checked" in out.stderr, out.stderr


def test_a_database_that_also_ran_the_applications_012_reaches_a_clean_verify(db, migrations):
    """The current application needs health_endpoint, so a database it built has its 012 too (column and
    a partial index). The documented procedure left that index behind, and verify failed for ever."""
    from test_adoption import APPLICATION_ROWS, APPLICATION_V1

    from conftest import ROOT

    db.query(APPLICATION_V1)
    db.query(APPLICATION_ROWS)
    db.query(  # the application's 012, rebuilt from the reference facts
        "ALTER TABLE node_registrations ADD COLUMN IF NOT EXISTS health_endpoint VARCHAR(500); "
        "CREATE INDEX IF NOT EXISTS idx_node_registrations_health_endpoint "
        "ON node_registrations (health_endpoint) WHERE health_endpoint IS NOT NULL"
    )
    engine.migrate(db.target(), migrations, to_version=6)
    db.psql("-1", "-f", str(ROOT / "scripts" / "adopt_application_v1.sql"))
    engine.migrate(db.target(), migrations)
    report = inspection.verify(db.target(), migrations)
    assert report.ok, report.problems
