-- Migration 001: create workflow_executions
-- Purpose:      tracks the lifecycle and state of every workflow execution run by the bridge
--               orchestrator (one row per execution, found by its correlation_id).
-- Depends on:   extension uuid-ossp (uuid_generate_v4); no earlier migration.
-- Referenced by: 002 workflow_steps.workflow_id (ON DELETE CASCADE),
--               006 metadata_stamps.workflow_id (ON DELETE SET NULL).
-- Rollback:     001_rollback_workflow_executions.sql
-- bridge:requires-extension uuid-ossp
--
-- The columns are exactly those of the application's ModelWorkflowExecution: its generic query
-- reads `SELECT *` into a model that forbids unknown fields, so an extra column here breaks every
-- read the application makes. States are written upper case by the application's entities and
-- reducer (PENDING, PROCESSING, ...) and lower case by its orchestrator enum, so the CHECK compares
-- upper(current_state). There is no "completed_at >= started_at" rule: the application stamps both
-- from its callers' clocks, and a completion from a clock running behind must not be refused. The
-- UNIQUE constraint on correlation_id is itself the index on
-- correlation_id: a second, plain index on the same column would only double the write cost.

CREATE TABLE IF NOT EXISTS workflow_executions (
    id                 UUID         NOT NULL DEFAULT uuid_generate_v4(),
    correlation_id     UUID         NOT NULL,
    workflow_type      VARCHAR(100) NOT NULL,
    current_state      VARCHAR(50)  NOT NULL DEFAULT 'PENDING',
    namespace          VARCHAR(255) NOT NULL,
    started_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    completed_at       TIMESTAMPTZ,
    execution_time_ms  BIGINT,
    error_message      TEXT,
    metadata           JSONB        NOT NULL DEFAULT '{}'::jsonb,
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_workflow_executions PRIMARY KEY (id),
    CONSTRAINT uq_workflow_executions_correlation_id UNIQUE (correlation_id),
    CONSTRAINT ck_workflow_executions_current_state
        CHECK (upper(current_state) IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    CONSTRAINT ck_workflow_executions_namespace_not_blank CHECK (btrim(namespace) <> ''),
    CONSTRAINT ck_workflow_executions_execution_time CHECK (execution_time_ms IS NULL OR execution_time_ms >= 0)
);

CREATE INDEX IF NOT EXISTS idx_workflow_executions_namespace ON workflow_executions (namespace);
CREATE INDEX IF NOT EXISTS idx_workflow_executions_current_state ON workflow_executions (current_state);
CREATE INDEX IF NOT EXISTS idx_workflow_executions_started_at ON workflow_executions (started_at);

COMMENT ON TABLE workflow_executions IS 'Workflow execution lifecycle and state, one row per execution.';
COMMENT ON COLUMN workflow_executions.id IS 'Execution id (UUID v4), generated here; the application reads it back with RETURNING id.';
COMMENT ON COLUMN workflow_executions.correlation_id IS 'Correlation id shared by every event of the execution; unique, and indexed by its UNIQUE constraint.';
COMMENT ON COLUMN workflow_executions.workflow_type IS 'Kind of workflow, e.g. metadata_stamping.';
COMMENT ON COLUMN workflow_executions.current_state IS 'Lifecycle state, in either case: PENDING, PROCESSING, COMPLETED, FAILED (the application) or CANCELLED.';
COMMENT ON COLUMN workflow_executions.namespace IS 'Tenant/namespace the execution belongs to.';
COMMENT ON COLUMN workflow_executions.started_at IS 'When the execution started.';
COMMENT ON COLUMN workflow_executions.completed_at IS 'When the execution reached a final state (from the caller''s clock).';
COMMENT ON COLUMN workflow_executions.execution_time_ms IS 'Wall time of the execution in milliseconds.';
COMMENT ON COLUMN workflow_executions.error_message IS 'Last error, set when the execution failed.';
COMMENT ON COLUMN workflow_executions.metadata IS 'Free-form metadata of the execution (a JSON object).';
COMMENT ON COLUMN workflow_executions.created_at IS 'When the row was inserted.';
COMMENT ON COLUMN workflow_executions.updated_at IS 'When the row was last updated (set by the application).';
