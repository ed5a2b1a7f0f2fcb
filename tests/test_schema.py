"""The schema the migrations build, checked against the seed README's "Database Schema" list."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from bridge_db import engine
from bridge_db.history import ENGINE_TABLES

# The seed's list, verbatim: primary key (columns, type), unique keys, foreign keys, indexes in order.
SEED_SCHEMA = {
    "workflow_executions": {
        "pk": (["id"], "uuid"),
        "unique": [["correlation_id"]],
        "fks": [],
        "indexes": [["correlation_id"], ["namespace"], ["current_state"], ["started_at"]],
    },
    "workflow_steps": {
        "pk": (["id"], "uuid"),
        "unique": [],
        "fks": [("workflow_id", "workflow_executions", "id", "CASCADE", False)],
        "indexes": [["workflow_id"], ["status"], ["created_at"], ["workflow_id", "step_order"]],
    },
    "fsm_transitions": {
        "pk": (["id"], "uuid"),
        "unique": [],
        "fks": [],
        "indexes": [["entity_id", "entity_type"], ["entity_type"], ["created_at"], ["from_state", "to_state"]],
    },
    "bridge_states": {
        "pk": (["bridge_id"], "uuid"),
        "unique": [],
        "fks": [],
        "indexes": [
            ["namespace"],
            ["current_fsm_state"],
            ["last_aggregation_timestamp"],
            ["namespace", "current_fsm_state"],
        ],
    },
    "node_registrations": {
        "pk": (["node_id"], "character varying"),
        "unique": [],
        "fks": [],
        "indexes": [["health_status"], ["node_type"], ["last_heartbeat"], ["node_type", "health_status"]],
    },
    "metadata_stamps": {
        "pk": (["id"], "uuid"),
        "unique": [],
        "fks": [("workflow_id", "workflow_executions", "id", "SET NULL", True)],
        "indexes": [["workflow_id"], ["file_hash"], ["namespace"], ["created_at"], ["namespace", "created_at"]],
    },
}
ON_DELETE = {"c": "CASCADE", "n": "SET NULL", "a": "NO ACTION", "r": "RESTRICT", "d": "SET DEFAULT"}


@pytest.fixture
def migrated(db, migrations):
    engine.migrate(db.target(), migrations)
    return db


def _index_columns(db, table: str) -> list[list[str]]:
    rows = db.query(
        """
        SELECT i.indexrelid, array_agg(a.attname::text ORDER BY k.ord)
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = %s::regclass
         GROUP BY i.indexrelid
        """,
        (table,),
    )
    return [list(r[1]) for r in rows]


def test_exactly_the_six_seed_tables_exist(migrated):
    tables = {r[0] for r in migrated.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables - set(ENGINE_TABLES) == set(SEED_SCHEMA)


@pytest.mark.parametrize("table", list(SEED_SCHEMA))
def test_primary_key_matches_seed(migrated, table):
    columns, type_name = SEED_SCHEMA[table]["pk"]
    rows = migrated.query(
        """
        SELECT a.attname, format_type(a.atttypid, NULL)
          FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
         WHERE c.conrelid = %s::regclass AND c.contype = 'p'
        """,
        (table,),
    )
    assert [r[0] for r in rows] == columns
    assert {r[1] for r in rows} == {type_name}


@pytest.mark.parametrize("table", list(SEED_SCHEMA))
def test_unique_keys_match_seed(migrated, table):
    rows = migrated.query(
        """
        SELECT array_agg(a.attname::text ORDER BY a.attnum)
          FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
         WHERE c.conrelid = %s::regclass AND c.contype = 'u' GROUP BY c.oid
        """,
        (table,),
    )
    assert sorted(list(r[0]) for r in rows) == sorted(SEED_SCHEMA[table]["unique"])


@pytest.mark.parametrize("table", list(SEED_SCHEMA))
def test_foreign_keys_match_seed(migrated, table):
    rows = migrated.query(
        """
        SELECT a.attname, c.confrelid::regclass::text, fa.attname, c.confdeltype, NOT a.attnotnull
          FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
          JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]
         WHERE c.conrelid = %s::regclass AND c.contype = 'f'
        """,
        (table,),
    )
    found = [(r[0], r[1], r[2], ON_DELETE[r[3]], r[4]) for r in rows]
    assert found == SEED_SCHEMA[table]["fks"]


@pytest.mark.parametrize("table", list(SEED_SCHEMA))
def test_every_seed_index_exists_with_columns_in_order(migrated, table):
    existing = _index_columns(migrated, table)
    for columns in SEED_SCHEMA[table]["indexes"]:
        assert columns in existing, f"{table}: no index on ({', '.join(columns)}); have {existing}"


@pytest.mark.parametrize("table", list(SEED_SCHEMA))
def test_no_two_indexes_on_the_same_columns(migrated, table):
    existing = _index_columns(migrated, table)
    assert len(existing) == len({tuple(c) for c in existing})


@pytest.mark.parametrize("table", list(SEED_SCHEMA))
def test_tables_and_columns_documented_and_timestamps_have_time_zone(migrated, table):
    assert migrated.query("SELECT obj_description(%s::regclass, 'pg_class')", (table,))[0][0]
    rows = migrated.query(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum)
          FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (table,),
    )
    assert [r[0] for r in rows if not r[2]] == []
    assert [r[0] for r in rows if r[1] == "timestamp without time zone"] == []


def test_foreign_key_actions_take_effect(migrated):
    conn = migrated.connect()
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace) "
            "VALUES (%s, 'stamping', 'omninode.test') RETURNING id",
            (str(uuid.uuid4()),),
        )
        workflow_id = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO workflow_steps (workflow_id, step_name, step_order) VALUES (%s, 'hash', 0)", (workflow_id,)
        )
        cur.execute(
            "INSERT INTO metadata_stamps (workflow_id, file_hash, namespace, stamp_data) "
            "VALUES (%s, repeat('ab', 32), 'omninode.test', '{}') RETURNING id",
            (workflow_id,),
        )
        stamp_id = cur.fetchone()[0]
        cur.execute("DELETE FROM workflow_executions WHERE id = %s", (workflow_id,))
        cur.execute("SELECT count(*) FROM workflow_steps")
        assert cur.fetchone()[0] == 0  # ON DELETE CASCADE
        cur.execute("SELECT workflow_id FROM metadata_stamps WHERE id = %s", (stamp_id,))
        assert cur.fetchone()[0] is None  # ON DELETE SET NULL: the audit row survives
    conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace, current_state) "
        "VALUES (uuid_generate_v4(), 't', 'ns', 'exploded')",
        "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace) VALUES (uuid_generate_v4(), 't', ' ')",
        "INSERT INTO node_registrations (node_id, node_type, node_version, health_status) VALUES ('n1', 'x', '1', 'ok')",
        "INSERT INTO metadata_stamps (file_hash, namespace, stamp_data) VALUES ('NOT-HEX', 'ns', '{}')",
        "INSERT INTO bridge_states (namespace, total_items_aggregated) VALUES ('ns', -1)",
    ],
)
def test_check_constraints_reject_bad_rows(migrated, statement):
    with pytest.raises(psycopg2.errors.CheckViolation):
        migrated.query(statement)


def test_correlation_id_is_unique(migrated):
    statement = (
        "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace) "
        "VALUES ('6f1c1c9e-2a57-4d0c-9a43-5c1f7e0a0001', 't', 'ns')"
    )
    migrated.query(statement)
    with pytest.raises(psycopg2.errors.UniqueViolation):
        migrated.query(statement)
