"""The OmniNode Bridge application's own statements, through its own driver, against the migrated schema.

Every statement below is shaped as the application sends it (omninode_bridge at
OmniNode-ai/omnibase_infra 4c42a02, `migration_sources/omninode_bridge/src/omninode_bridge/`; the
file each comes from is named beside it), with the Python types it binds through asyncpg:
`uuid.UUID`, timezone-aware `datetime`, JSONB as a JSON string (its `EntityRegistry.serialize_entity`
json.dumps every JSONB field), states in the case it writes them. Values are its fixtures' values
(tests/conftest.py `sample_*_entity`) and its enums' values.

The application's generic QUERY reads `SELECT * FROM <table>` into its entity models, which are
declared `extra="forbid"`: a column the application does not know breaks every read. So each table's
columns are checked to be exactly the entity's fields (node_registrations: plus health_endpoint,
which its registry reads by name).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg2.extensions
import pytest

from bridge_db import engine

# Fields of the runtime entities (infrastructure/entities/model_*.py), which EntityRegistry maps to
# the tables and the generic QUERY builds from `SELECT *`.
ENTITY_FIELDS = {
    "workflow_executions": {  # ModelWorkflowExecution
        "id", "correlation_id", "workflow_type", "current_state", "namespace", "started_at", "completed_at",
        "execution_time_ms", "error_message", "metadata", "created_at", "updated_at",
    },
    "workflow_steps": {  # ModelWorkflowStep
        "id", "workflow_id", "step_name", "step_order", "status", "execution_time_ms", "step_data",
        "error_message", "created_at",
    },
    "fsm_transitions": {  # ModelFSMTransition
        "id", "entity_id", "entity_type", "from_state", "to_state", "transition_event", "transition_data",
        "created_at",
    },
    "bridge_states": {  # ModelBridgeState
        "bridge_id", "namespace", "total_workflows_processed", "total_items_aggregated", "aggregation_metadata",
        "current_fsm_state", "last_aggregation_timestamp", "created_at", "updated_at",
    },
    "node_registrations": {  # ModelNodeHeartbeat, plus health_endpoint (services/node_registration_repository.py)
        "node_id", "node_type", "node_version", "capabilities", "endpoints", "metadata", "health_status",
        "last_heartbeat", "registered_at", "updated_at", "health_endpoint",
    },
    "metadata_stamps": {  # ModelMetadataStamp
        "id", "workflow_id", "file_hash", "stamp_data", "namespace", "created_at",
    },
}  # fmt: skip

# Values the application writes, in its case, with where they come from.
WORKFLOW_STATES = ["PENDING", "PROCESSING", "COMPLETED", "FAILED"]  # fixtures, persistence docs, models/entities
ORCHESTRATOR_STATES = ["pending", "processing", "completed", "failed"]  # orchestrator EnumWorkflowState
STEP_STATUSES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "SKIPPED"]  # fixtures, adapter guide
HEALTH_STATUSES = [
    "UNKNOWN", "HEALTHY", "DEGRADED", "UNHEALTHY", "OFFLINE",  # entity default/fixtures, database guide
    "healthy", "degraded", "unhealthy", "unknown",  # registry service EnumHealthStatus
    "critical", "recovering",  # heartbeat event EnumNodeHealthStatus
]  # fmt: skip
BRIDGE_FSM_STATES = ["idle", "active", "aggregating", "persisting", "IDLE", "PROCESSING", "AGGREGATING"]
BLAKE3_HASH = "a" * 16 + "0123456789abcdef" * 3  # 64 lower-case hex digits, the runtime entity's pattern


@pytest.fixture
def app_db(db, migrations):
    engine.migrate(db.target(), migrations)
    return db


def run(db, scenario):
    """Run `scenario(conn)` on an asyncpg connection to `db`, as the application's pool would."""
    params = psycopg2.extensions.parse_dsn(db.dsn)

    async def main():
        conn = await asyncpg.connect(
            host=params.get("host"),
            port=int(params["port"]) if params.get("port") else None,
            user=params.get("user"),
            database=params["dbname"],
        )
        try:
            return await scenario(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def now() -> datetime:
    return datetime.now(UTC)


async def insert_workflow(conn, state: str = "PROCESSING", correlation_id: uuid.UUID | None = None):
    """nodes/database_adapter_effect/v1_0_0/node.py `_persist_workflow_execution`, INSERT branch."""
    return await conn.fetchval(
        """
                    INSERT INTO workflow_executions (
                        correlation_id, workflow_type, current_state, namespace,
                        started_at, metadata
                    )
                    VALUES ($1, $2, $3, $4, $5, $6)
                    RETURNING id
                """,
        correlation_id or uuid.uuid4(),
        "metadata_stamping",
        state,
        "production",
        now(),
        json.dumps({"source": "api", "user_id": "user_123"}),
    )


def generic_insert(table: str, entity: dict) -> tuple[str, list]:
    """_generic_crud_handlers.py `_handle_insert`: the serialised entity's keys, in order, RETURNING id."""
    columns = list(entity)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
    query = f"""
                INSERT INTO {table} ({", ".join(columns)})
                VALUES ({placeholders})
                RETURNING id
            """
    return query, [entity[c] for c in columns]


def generic_select(table: str, filters: dict, sort_by: str | None = None) -> tuple[str, list]:
    """_generic_crud_handlers.py `_build_select_query`: SELECT *, WHERE col = $n AND ..., ORDER BY."""
    where = " AND ".join(f"{col} = ${i + 1}" for i, col in enumerate(filters))
    query = f"SELECT * FROM {table} WHERE {where} ORDER BY {sort_by or 'id'} DESC LIMIT 100"
    return query, list(filters.values())


def generic_update(table: str, entity: dict, filters: dict) -> tuple[str, list]:
    """_generic_crud_handlers.py `_build_update_query`: SET every serialised field, WHERE the filters."""
    sets = [f"{col} = ${i + 1}" for i, col in enumerate(entity)]
    where = [f"{col} = ${len(entity) + i + 1}" for i, col in enumerate(filters)]
    return f"UPDATE {table} SET {', '.join(sets)} WHERE {' AND '.join(where)}", [*entity.values(), *filters.values()]


def assert_entity_row(table: str, row) -> None:
    """What `entity_model(**row)` needs: no column the model forbids, none it requires missing."""
    assert set(row.keys()) == ENTITY_FIELDS[table]


# --------------------------------------------------------------------------- workflow_executions


@pytest.mark.parametrize("state", WORKFLOW_STATES + ORCHESTRATOR_STATES)
def test_adapter_inserts_a_workflow_in_every_state_it_writes(app_db, state):
    async def scenario(conn):
        workflow_id = await insert_workflow(conn, state)
        return workflow_id, await conn.fetchval(
            "SELECT current_state FROM workflow_executions WHERE id = $1", workflow_id
        )

    workflow_id, stored = run(app_db, scenario)
    assert isinstance(workflow_id, uuid.UUID) and stored == state  # stored in the case it was written


@pytest.mark.parametrize("final_state, error", [("COMPLETED", None), ("FAILED", "Hash generation timeout")])
def test_adapter_completion_and_failure_updates(app_db, final_state, error):
    """node.py `_persist_workflow_execution`, UPDATE branch, by correlation_id."""

    async def scenario(conn):
        correlation_id = uuid.uuid4()
        workflow_id = await insert_workflow(conn, "PROCESSING", correlation_id)
        rows = await conn.fetch(
            """
                    UPDATE workflow_executions
                    SET current_state = $1,
                        completed_at = $2,
                        execution_time_ms = $3,
                        error_message = $4,
                        metadata = $5,
                        updated_at = NOW()
                    WHERE correlation_id = $6
                    RETURNING id
                """,
            final_state,
            now() + timedelta(seconds=2),
            1234,
            error,
            json.dumps({"source": "api", "steps": 3}),
            correlation_id,
        )
        query, args = generic_select("workflow_executions", {"correlation_id": correlation_id}, "created_at")
        return workflow_id, rows, await conn.fetch(query, *args)

    workflow_id, updated, read = run(app_db, scenario)
    assert [r["id"] for r in updated] == [workflow_id]
    assert len(read) == 1
    assert_entity_row("workflow_executions", read[0])
    assert read[0]["current_state"] == final_state and read[0]["error_message"] == error
    assert read[0]["execution_time_ms"] == 1234 and json.loads(read[0]["metadata"])["steps"] == 3


def test_generic_crud_inserts_reads_and_updates_the_fixture_workflow(app_db):
    """tests/conftest.py `sample_workflow_execution_entity`, through EntityRegistry.serialize_entity
    (drops None, id, created_at, updated_at; JSONB as JSON strings), then the persistence helpers'
    query by namespace and state and update by correlation_id."""
    correlation_id = uuid.uuid4()
    entity = {
        "correlation_id": correlation_id,
        "workflow_type": "metadata_stamping",
        "current_state": "PROCESSING",
        "namespace": "test_app",
        "started_at": now(),
        "metadata": json.dumps({"test": True}),
    }

    async def scenario(conn):
        query, args = generic_insert("workflow_executions", entity)
        new_id = await conn.fetchval(query, *args)
        query, args = generic_update(
            "workflow_executions",
            {**entity, "current_state": "COMPLETED", "completed_at": now() + timedelta(seconds=1),
             "execution_time_ms": 87, "metadata": json.dumps({"test": True, "done": True})},
            {"correlation_id": correlation_id},
        )  # fmt: skip
        status = await conn.execute(query, *args)
        query, args = generic_select(
            "workflow_executions", {"namespace": "test_app", "current_state": "COMPLETED"}, "created_at"
        )
        return new_id, status, await conn.fetch(query, *args)

    new_id, status, rows = run(app_db, scenario)
    assert status == "UPDATE 1"
    assert [r["id"] for r in rows] == [new_id]
    assert_entity_row("workflow_executions", rows[0])
    assert rows[0]["correlation_id"] == correlation_id and rows[0]["execution_time_ms"] == 87


# --------------------------------------------------------------------------- workflow_steps


@pytest.mark.parametrize("status", STEP_STATUSES + [s.lower() for s in STEP_STATUSES])
def test_generic_crud_inserts_a_step_with_step_data_in_every_status(app_db, status):
    """`sample_workflow_step_entity`: step_data is always sent (default {}), status as written."""

    async def scenario(conn):
        workflow_id = await insert_workflow(conn)
        query, args = generic_insert(
            "workflow_steps",
            {
                "workflow_id": workflow_id,
                "step_name": "generate_blake3_hash",
                "step_order": 1,
                "status": status,
                "execution_time_ms": 2,
                "step_data": json.dumps({"file_hash": BLAKE3_HASH, "file_size": 1024}),
            },
        )
        step_id = await conn.fetchval(query, *args)
        query, args = generic_select("workflow_steps", {"workflow_id": workflow_id}, "step_order")
        return step_id, await conn.fetch(query, *args)

    step_id, rows = run(app_db, scenario)
    assert [r["id"] for r in rows] == [step_id]
    assert_entity_row("workflow_steps", rows[0])
    assert rows[0]["status"] == status and json.loads(rows[0]["step_data"])["file_size"] == 1024


def test_a_step_without_step_data_gets_an_empty_object(app_db):
    async def scenario(conn):
        workflow_id = await insert_workflow(conn)
        query, args = generic_insert(
            "workflow_steps",
            {"workflow_id": workflow_id, "step_name": "validate", "step_order": 0, "status": "PENDING"},
        )
        step_id = await conn.fetchval(query, *args)
        return await conn.fetchval("SELECT step_data FROM workflow_steps WHERE id = $1", step_id)

    assert json.loads(run(app_db, scenario)) == {}


# --------------------------------------------------------------------------- fsm_transitions


def test_generic_crud_records_and_looks_up_a_transition_by_uuid(app_db):
    """`sample_fsm_transition_entity`: entity_id is a uuid.UUID (the workflow's correlation id)."""
    entity_id = uuid.uuid4()

    async def scenario(conn):
        ids = []
        for from_state, to_state, event in [(None, "PENDING", "create"), ("PENDING", "PROCESSING", "start_processing")]:
            entity = {"entity_id": entity_id, "entity_type": "workflow", "to_state": to_state,
                      "transition_event": event, "transition_data": json.dumps({"reason": "test"})}  # fmt: skip
            if from_state:
                entity["from_state"] = from_state  # serialize_entity drops None
            query, args = generic_insert("fsm_transitions", entity)
            ids.append(await conn.fetchval(query, *args))
        query, args = generic_select(
            "fsm_transitions", {"entity_id": entity_id, "entity_type": "workflow"}, "created_at"
        )
        return ids, await conn.fetch(query, *args)

    ids, rows = run(app_db, scenario)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    for row in rows:
        assert_entity_row("fsm_transitions", row)
        assert row["entity_id"] == entity_id
    assert {(r["from_state"], r["to_state"]) for r in rows} == {(None, "PENDING"), ("PENDING", "PROCESSING")}


# --------------------------------------------------------------------------- bridge_states

BRIDGE_UPSERT = """
            INSERT INTO bridge_states (
                bridge_id, namespace, total_workflows_processed,
                total_items_aggregated, aggregation_metadata,
                current_fsm_state, last_aggregation_timestamp,
                created_at, updated_at
            ) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, NOW(), NOW())
            ON CONFLICT (bridge_id) DO UPDATE SET
                namespace = EXCLUDED.namespace,
                total_workflows_processed = bridge_states.total_workflows_processed + EXCLUDED.total_workflows_processed,
                total_items_aggregated = bridge_states.total_items_aggregated + EXCLUDED.total_items_aggregated,
                aggregation_metadata = EXCLUDED.aggregation_metadata,
                current_fsm_state = EXCLUDED.current_fsm_state,
                last_aggregation_timestamp = EXCLUDED.last_aggregation_timestamp,
                updated_at = NOW()
            RETURNING bridge_id, namespace, total_workflows_processed, total_items_aggregated;
        """  # database_adapter_effect/v1_0_0/_persist_bridge_state_implementation.py


def test_adapter_upsert_of_bridge_state_adds_to_the_counters(app_db):
    bridge_id = uuid.uuid4()

    async def scenario(conn):
        returned = []
        for state, workflows, items in [("aggregating", 10, 100), ("idle", 5, 50), ("PROCESSING", 1, 1)]:
            returned.append(
                await conn.fetchrow(
                    BRIDGE_UPSERT,
                    bridge_id,
                    "production",
                    workflows,
                    items,
                    json.dumps({"file_types": {"python": 7}}),
                    state,
                    now(),
                )  # fmt: skip
            )
        query, args = generic_select("bridge_states", {"bridge_id": bridge_id}, "updated_at")
        return returned, await conn.fetch(query, *args)

    returned, rows = run(app_db, scenario)
    assert [(r["total_workflows_processed"], r["total_items_aggregated"]) for r in returned] == [
        (10, 100),
        (15, 150),
        (16, 151),
    ]
    assert len(rows) == 1
    assert_entity_row("bridge_states", rows[0])
    assert rows[0]["current_fsm_state"] == "PROCESSING"


@pytest.mark.parametrize("state", BRIDGE_FSM_STATES)
def test_bridge_state_accepts_every_fsm_state_the_application_writes(app_db, state):
    """persistence/bridge_state_crud.py `update_bridge_state`: a generic UPDATE by bridge_id."""
    bridge_id = uuid.uuid4()

    async def scenario(conn):
        await conn.execute(BRIDGE_UPSERT, bridge_id, "test_namespace", 0, 0, "{}", "IDLE", None)
        query, args = generic_update(
            "bridge_states",
            {"bridge_id": bridge_id, "namespace": "test_namespace", "total_workflows_processed": 3,
             "total_items_aggregated": 30, "aggregation_metadata": json.dumps({"window": "5m"}),
             "current_fsm_state": state, "last_aggregation_timestamp": now()},
            {"bridge_id": bridge_id},
        )  # fmt: skip
        await conn.execute(query, *args)
        return await conn.fetchval("SELECT current_fsm_state FROM bridge_states WHERE bridge_id = $1", bridge_id)

    assert run(app_db, scenario) == state


# --------------------------------------------------------------------------- node_registrations

REGISTRY_UPSERT = """
            INSERT INTO node_registrations (
                node_id, node_type, node_version, capabilities, endpoints, metadata, health_endpoint
            )
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (node_id)
            DO UPDATE SET
                node_type = EXCLUDED.node_type,
                node_version = EXCLUDED.node_version,
                capabilities = EXCLUDED.capabilities,
                endpoints = EXCLUDED.endpoints,
                metadata = EXCLUDED.metadata,
                health_endpoint = EXCLUDED.health_endpoint,
                last_heartbeat = NOW(),
                updated_at = NOW()
            RETURNING node_id, node_type, capabilities, endpoints, metadata,
                      health_endpoint, last_heartbeat, registered_at, updated_at
        """  # services/node_registration_repository.py `create_registration`
REGISTRY_COLUMNS = (
    "node_id, node_type, capabilities, endpoints, metadata, health_endpoint, last_heartbeat, registered_at, updated_at"
)


def test_registry_registers_reregisters_heartbeats_lists_and_deletes_a_node(app_db):
    node_id = f"metadata-stamping-{uuid.uuid4().hex[:8]}"

    async def scenario(conn):
        first = await conn.fetchrow(
            REGISTRY_UPSERT, node_id, "effect", "1.0.0", json.dumps({"hashing": "blake3"}),
            json.dumps({"http": "http://metadata-service:8053"}), json.dumps({"region": "eu"}),
            "http://metadata-service:8053/health",
        )  # fmt: skip
        again = await conn.fetchrow(
            REGISTRY_UPSERT, node_id, "effect", "1.1.0", "{}", "{}", "{}", "http://metadata-service:8053/healthz"
        )
        got = await conn.fetchrow(f"SELECT {REGISTRY_COLUMNS} FROM node_registrations WHERE node_id = $1", node_id)
        beat_at = await conn.execute(
            "UPDATE node_registrations SET last_heartbeat = $1, updated_at = NOW() WHERE node_id = $2", now(), node_id
        )
        beat_now = await conn.execute(
            "UPDATE node_registrations SET last_heartbeat = NOW(), updated_at = NOW() WHERE node_id = $1", node_id
        )
        listed = await conn.fetch(
            f"SELECT {REGISTRY_COLUMNS} FROM node_registrations WHERE node_type = $1 ORDER BY registered_at DESC",
            "effect",
        )
        health = await conn.fetchval("SELECT health_status FROM node_registrations WHERE node_id = $1", node_id)
        deleted = await conn.execute("DELETE FROM node_registrations WHERE node_id = $1", node_id)
        return first, again, got, beat_at, beat_now, listed, health, deleted

    first, again, got, beat_at, beat_now, listed, health, deleted = run(app_db, scenario)
    assert first["health_endpoint"] == "http://metadata-service:8053/health"
    assert again["registered_at"] == first["registered_at"]  # re-registration keeps the first time
    assert got["health_endpoint"] == "http://metadata-service:8053/healthz"
    assert beat_at == beat_now == "UPDATE 1" and deleted == "DELETE 1"  # what the repository compares to
    assert [r["node_id"] for r in listed] == [node_id]
    assert health == "UNKNOWN"  # the application's default, in its case


def test_registry_update_by_field_whitelist(app_db):
    """node_registration_repository.py `update_registration`: SET field = $n for each given field."""
    node_id = "orchestrator-v1-instance-1"

    async def scenario(conn):
        await conn.execute(REGISTRY_UPSERT, node_id, "orchestrator", "1.0.0", "{}", "{}", "{}", None)
        return await conn.fetchrow(
            f"""
            UPDATE node_registrations
            SET health_endpoint = $1, capabilities = $2, updated_at = NOW()
            WHERE node_id = $3
            RETURNING {REGISTRY_COLUMNS}
        """,
            "http://orchestrator:8060/health",
            json.dumps({"workflows": ["metadata_stamping"]}),
            node_id,
        )

    row = run(app_db, scenario)
    assert row["health_endpoint"] == "http://orchestrator:8060/health"


@pytest.mark.parametrize("health", HEALTH_STATUSES)
def test_heartbeat_entity_in_every_health_status(app_db, health):
    """`sample_node_heartbeat_entity` through the generic INSERT (no id column, so RETURNING node_id)."""

    async def scenario(conn):
        node_id = f"reducer-{uuid.uuid4().hex[:8]}"
        entity = {"node_id": node_id, "node_type": "reducer", "node_version": "1.0.0",
                  "capabilities": json.dumps({"aggregation": True}), "endpoints": json.dumps({}),
                  "metadata": json.dumps({"instance": 1}), "health_status": health, "last_heartbeat": now()}  # fmt: skip
        query, args = generic_insert("node_registrations", entity)
        await conn.execute(query.replace("RETURNING id", "RETURNING node_id"), *args)
        rows = await conn.fetch("SELECT * FROM node_registrations WHERE node_id = $1", node_id)
        return rows

    rows = run(app_db, scenario)
    assert_entity_row("node_registrations", rows[0])
    assert rows[0]["health_status"] == health


# --------------------------------------------------------------------------- metadata_stamps


@pytest.mark.parametrize(
    "file_hash",
    [BLAKE3_HASH, BLAKE3_HASH.upper(), "ABCDEF0123", "f" * 128],  # runtime entity; models/entities (1..128, any case)
)
def test_generic_crud_stamps_a_file_and_the_stamp_outlives_its_workflow(app_db, file_hash):
    async def scenario(conn):
        workflow_id = await insert_workflow(conn, "COMPLETED")
        query, args = generic_insert(
            "metadata_stamps",
            {"workflow_id": workflow_id, "file_hash": file_hash, "namespace": "test_app",
             "stamp_data": json.dumps({"stamp_type": "inline", "version": "1.0"})},
        )  # fmt: skip
        stamp_id = await conn.fetchval(query, *args)
        query, args = generic_insert(  # a stamp without a workflow: serialize_entity drops workflow_id=None
            "metadata_stamps", {"file_hash": file_hash, "namespace": "test_app", "stamp_data": json.dumps({"a": 1})}
        )
        await conn.fetchval(query, *args)
        await conn.execute("DELETE FROM workflow_executions WHERE id = $1", workflow_id)
        query, args = generic_select("metadata_stamps", {"file_hash": file_hash}, "created_at")
        return stamp_id, await conn.fetch(query, *args)

    stamp_id, rows = run(app_db, scenario)
    assert len(rows) == 2 and stamp_id in {r["id"] for r in rows}
    for row in rows:
        assert_entity_row("metadata_stamps", row)
        assert row["workflow_id"] is None and row["file_hash"] == file_hash


# --------------------------------------------------------------------------- the columns themselves


@pytest.mark.parametrize("table", sorted(ENTITY_FIELDS))
def test_every_table_has_exactly_the_columns_the_application_reads(app_db, table):
    columns = {
        r[0]
        for r in app_db.query(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
    }
    assert columns == ENTITY_FIELDS[table]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO workflow_executions (correlation_id, workflow_type, namespace, current_state, started_at) "
        "VALUES (uuid_generate_v4(), 't', 'ns', 'EXPLODED', now())",
        "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status) "
        "SELECT id, 's', 0, 'WAITING' FROM workflow_executions",
        "INSERT INTO node_registrations (node_id, node_type, node_version, health_status) VALUES ('n1', 'x', '1', 'ok')",
        "INSERT INTO metadata_stamps (file_hash, namespace, stamp_data) VALUES ('not-hex', 'ns', '{}')",
    ],
)
def test_values_outside_the_application_vocabulary_are_still_refused(app_db, statement):
    run(app_db, lambda conn: insert_workflow(conn))
    with pytest.raises(Exception, match="violates check constraint"):
        app_db.query(statement)
