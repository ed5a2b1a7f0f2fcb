"""A database the OmniNode Bridge application built with its own 001-006 SQL: adopted by `migrate`,
described precisely by `verify`, and brought to the project's head by the documented procedure
(migrations/README.md, "Adopting a database the application built")."""

from __future__ import annotations

import pytest

from bridge_db import engine, inspection

from catalog import snapshot
from conftest import HEAD, ROOT, run_cli

# The application's v1 schema, written here from the facts in shared/reference (column names, types,
# defaults, unnamed constraints, its own index names and DESC orders): what a database it built holds.
APPLICATION_V1 = """
CREATE TABLE workflow_executions (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(), correlation_id UUID NOT NULL UNIQUE,
    workflow_type VARCHAR(100) NOT NULL, current_state VARCHAR(50) NOT NULL, namespace VARCHAR(255) NOT NULL,
    started_at TIMESTAMPTZ NOT NULL, completed_at TIMESTAMPTZ, execution_time_ms INTEGER CHECK (execution_time_ms >= 0),
    error_message TEXT, metadata JSONB DEFAULT '{}', created_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now());
CREATE INDEX idx_workflow_executions_correlation_id ON workflow_executions (correlation_id);
CREATE INDEX idx_workflow_executions_namespace ON workflow_executions (namespace);
CREATE INDEX idx_workflow_executions_state ON workflow_executions (current_state);
CREATE INDEX idx_workflow_executions_started_at ON workflow_executions (started_at DESC);
CREATE TABLE workflow_steps (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    workflow_id UUID NOT NULL REFERENCES workflow_executions (id) ON DELETE CASCADE,
    step_name VARCHAR(100) NOT NULL, step_order INTEGER NOT NULL CHECK (step_order >= 0), status VARCHAR(50) NOT NULL,
    execution_time_ms INTEGER CHECK (execution_time_ms >= 0), step_data JSONB DEFAULT '{}', error_message TEXT,
    created_at TIMESTAMPTZ DEFAULT now());
CREATE INDEX idx_workflow_steps_workflow_id ON workflow_steps (workflow_id);
CREATE INDEX idx_workflow_steps_status ON workflow_steps (status);
CREATE INDEX idx_workflow_steps_created_at ON workflow_steps (created_at DESC);
CREATE INDEX idx_workflow_steps_workflow_id_order ON workflow_steps (workflow_id, step_order);
CREATE TABLE fsm_transitions (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(), entity_id UUID NOT NULL, entity_type VARCHAR(100) NOT NULL,
    from_state VARCHAR(50), to_state VARCHAR(50) NOT NULL, transition_event VARCHAR(100) NOT NULL,
    transition_data JSONB DEFAULT '{}', created_at TIMESTAMPTZ DEFAULT now());
CREATE INDEX idx_fsm_transitions_entity ON fsm_transitions (entity_id, entity_type);
CREATE INDEX idx_fsm_transitions_entity_type ON fsm_transitions (entity_type);
CREATE INDEX idx_fsm_transitions_created_at ON fsm_transitions (created_at DESC);
CREATE INDEX idx_fsm_transitions_states ON fsm_transitions (from_state, to_state);
CREATE TABLE bridge_states (
    bridge_id UUID PRIMARY KEY, namespace VARCHAR(255) NOT NULL,
    total_workflows_processed INTEGER NOT NULL DEFAULT 0 CHECK (total_workflows_processed >= 0),
    total_items_aggregated INTEGER NOT NULL DEFAULT 0 CHECK (total_items_aggregated >= 0),
    aggregation_metadata JSONB DEFAULT '{}', current_fsm_state VARCHAR(50) NOT NULL,
    last_aggregation_timestamp TIMESTAMPTZ, created_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now());
CREATE INDEX idx_bridge_states_namespace ON bridge_states (namespace);
CREATE INDEX idx_bridge_states_fsm_state ON bridge_states (current_fsm_state);
CREATE INDEX idx_bridge_states_last_aggregation ON bridge_states (last_aggregation_timestamp DESC);
CREATE INDEX idx_bridge_states_namespace_state ON bridge_states (namespace, current_fsm_state);
CREATE TABLE node_registrations (
    node_id VARCHAR(255) PRIMARY KEY, node_type VARCHAR(100) NOT NULL, node_version VARCHAR(50) NOT NULL,
    capabilities JSONB DEFAULT '{}', endpoints JSONB DEFAULT '{}', metadata JSONB DEFAULT '{}',
    health_status VARCHAR(50) NOT NULL DEFAULT 'UNKNOWN', last_heartbeat TIMESTAMPTZ,
    registered_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now());
CREATE INDEX idx_node_registrations_health ON node_registrations (health_status);
CREATE INDEX idx_node_registrations_type ON node_registrations (node_type);
CREATE INDEX idx_node_registrations_last_heartbeat ON node_registrations (last_heartbeat DESC);
CREATE INDEX idx_node_registrations_type_health ON node_registrations (node_type, health_status);
CREATE TABLE metadata_stamps (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    workflow_id UUID REFERENCES workflow_executions (id) ON DELETE SET NULL,
    file_hash VARCHAR(128) NOT NULL, stamp_data JSONB NOT NULL, namespace VARCHAR(255) NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now());
CREATE INDEX idx_metadata_stamps_workflow_id ON metadata_stamps (workflow_id);
CREATE INDEX idx_metadata_stamps_file_hash ON metadata_stamps (file_hash);
CREATE INDEX idx_metadata_stamps_namespace ON metadata_stamps (namespace);
CREATE INDEX idx_metadata_stamps_created_at ON metadata_stamps (created_at DESC);
CREATE INDEX idx_metadata_stamps_namespace_created_at ON metadata_stamps (namespace, created_at DESC);
"""

# Rows as the application wrote them, NULLs where its schema allowed them.
APPLICATION_ROWS = """
INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, namespace, started_at, metadata)
VALUES ('11111111-1111-4111-8111-111111111111', 'metadata_stamping', 'PROCESSING', 'production', now(), NULL),
       ('22222222-2222-4222-8222-222222222222', 'metadata_stamping', 'completed', 'production', now(), '{"a": 1}');
INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, step_data)
SELECT id, 'generate_blake3_hash', 0, 'COMPLETED', NULL FROM workflow_executions;
INSERT INTO fsm_transitions (entity_id, entity_type, from_state, to_state, transition_event)
VALUES ('11111111-1111-4111-8111-111111111111', 'workflow', 'PENDING', 'PROCESSING', 'start_processing');
INSERT INTO bridge_states (bridge_id, namespace, total_workflows_processed, current_fsm_state)
VALUES ('33333333-3333-4333-8333-333333333333', 'production', 7, 'aggregating');
INSERT INTO node_registrations (node_id, node_type, node_version) VALUES ('metadata-stamping-1', 'effect', '1.0.0');
INSERT INTO metadata_stamps (workflow_id, file_hash, stamp_data, namespace)
SELECT id, repeat('AB', 32), '{"stamp": true}', 'production' FROM workflow_executions;
"""
TABLES = ["workflow_executions", "workflow_steps", "fsm_transitions", "bridge_states", "node_registrations",
          "metadata_stamps"]  # fmt: skip


@pytest.fixture
def application_db(db):
    db.query(APPLICATION_V1)
    db.query(APPLICATION_ROWS)
    return db


def _counts(db) -> dict[str, int]:
    return {t: db.query(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def _adopt_script(db, check=True):
    return db.psql("-1", "-f", str(ROOT / "scripts" / "adopt_application_v1.sql"), check=check)


def test_migrate_adopts_it_and_verify_names_every_difference(application_db, migrations):
    rows = _counts(application_db)
    result = engine.migrate(application_db.target(), migrations, to_version=6)
    assert [s.version for s in result.steps] == [1, 2, 3, 4, 5, 6]
    assert all(s.already_existed > 0 for s in result.steps)  # every table found, none rebuilt
    assert _counts(application_db) == rows

    report = inspection.verify(application_db.target(), migrations)
    assert report.compared == "definitions" and not report.ok
    expected = [
        "column workflow_executions.execution_time_ms is integer, the migrations declare bigint",
        "column workflow_executions.metadata is nullable, the migrations declare NOT NULL",
        "column workflow_executions.current_state has default none, the migrations declare 'PENDING'::character varying",
        "column workflow_steps.step_name is character varying(100), the migrations declare character varying(255)",
        "column bridge_states.total_items_aggregated is integer, the migrations declare bigint",
        "constraint workflow_executions_pkey on workflow_executions is named pk_workflow_executions in the migrations",
        "constraint workflow_steps_workflow_id_fkey on workflow_steps is named fk_workflow_steps_workflow_id "
        "in the migrations",
        "constraint workflow_executions_execution_time_ms_check on workflow_executions is not declared by the "
        "migrations: CHECK ((execution_time_ms >= 0))",
        "index idx_fsm_transitions_entity on fsm_transitions is not declared by the migrations: "
        "USING btree (entity_id, entity_type)",
        "index idx_metadata_stamps_created_at on metadata_stamps is USING btree (created_at DESC), "
        "the migrations declare USING btree (created_at)",
        "index idx_workflow_executions_correlation_id on workflow_executions is not declared by the migrations: "
        "USING btree (correlation_id)",
    ]
    for line in expected:
        assert line in report.problems
    assert any(p.startswith("constraint ck_node_registrations_health_status on node_registrations is missing: CHECK")
               for p in report.problems)  # fmt: skip
    out = run_cli("verify", "--dsn", application_db.dsn)
    assert out.returncode == 5 and expected[0] in out.stderr


def test_the_documented_procedure_brings_it_to_head_keeping_every_row(application_db, migrations):
    rows = _counts(application_db)
    engine.migrate(application_db.target(), migrations, to_version=6)
    out = _adopt_script(application_db)
    assert out.returncode == 0, out.stderr
    report = inspection.verify(application_db.target(), migrations)
    assert report.ok and report.compared == "definitions", report.problems
    assert _counts(application_db) == rows
    assert application_db.query("SELECT count(*) FROM workflow_executions WHERE metadata = '{}'") == [(1,)]

    # the catalog is now the one the project's migrations build on an empty database
    result = engine.migrate(application_db.target(), migrations)
    assert [s.version for s in result.steps] == list(range(7, HEAD + 1))
    assert inspection.verify(application_db.target(), migrations).ok
    application_db.query(
        "UPDATE node_registrations SET health_endpoint = 'http://metadata-service:8053/health', "
        "health_status = 'HEALTHY' WHERE node_id = 'metadata-stamping-1'"
    )
    # a second run of the script is harmless
    assert _adopt_script(application_db).returncode == 0
    assert inspection.verify(application_db.target(), migrations).ok


def test_the_same_catalog_as_a_fresh_database(application_db, db_factory, migrations):
    engine.migrate(application_db.target(), migrations, to_version=6)
    _adopt_script(application_db)
    engine.migrate(application_db.target(), migrations)
    fresh = db_factory()
    engine.migrate(fresh.target(), migrations)
    adopted, built = snapshot(application_db.connect()), snapshot(fresh.connect())
    for aspect in ("relations", "constraints", "indexes"):
        assert adopted[aspect] == built[aspect], aspect
    assert [r[:5] for r in adopted["columns"]] == [r[:5] for r in built["columns"]]  # comments may differ


def test_a_row_outside_the_project_rules_stops_the_script_and_changes_nothing(application_db, migrations):
    engine.migrate(application_db.target(), migrations, to_version=6)
    application_db.query("UPDATE workflow_executions SET current_state = 'EXPLODED' WHERE current_state = 'completed'")
    before = snapshot(application_db.connect())
    out = _adopt_script(application_db, check=False)
    assert out.returncode != 0 and b"ck_workflow_executions_current_state" in out.stderr
    assert snapshot(application_db.connect()) == before
