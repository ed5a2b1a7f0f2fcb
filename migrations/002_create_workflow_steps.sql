-- Migration 002: create workflow_steps
-- Purpose:     history of the individual steps executed within a workflow, in order, one row per
--              step.
-- Depends on:  001 workflow_executions (foreign key workflow_id, ON DELETE CASCADE: deleting an
--              execution deletes its steps); extension uuid-ossp.
-- Rollback:    002_rollback_workflow_steps.sql
-- bridge:requires-extension uuid-ossp
--
-- The columns are exactly those of the application's ModelWorkflowStep (its reads forbid unknown
-- columns). step_data is always sent by the application (default {}). Status is written upper case
-- (PENDING, COMPLETED, ...) by the application, so the CHECK compares upper(status).

CREATE TABLE IF NOT EXISTS workflow_steps (
    id                 UUID         NOT NULL DEFAULT uuid_generate_v4(),
    workflow_id        UUID         NOT NULL,
    step_name          VARCHAR(255) NOT NULL,
    step_order         INTEGER      NOT NULL,
    status             VARCHAR(50)  NOT NULL DEFAULT 'PENDING',
    execution_time_ms  BIGINT,
    step_data          JSONB        NOT NULL DEFAULT '{}'::jsonb,
    error_message      TEXT,
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_workflow_steps PRIMARY KEY (id),
    CONSTRAINT fk_workflow_steps_workflow_id FOREIGN KEY (workflow_id)
        REFERENCES workflow_executions (id) ON DELETE CASCADE,
    CONSTRAINT ck_workflow_steps_status
        CHECK (upper(status) IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'SKIPPED')),
    CONSTRAINT ck_workflow_steps_step_order CHECK (step_order >= 0),
    CONSTRAINT ck_workflow_steps_execution_time CHECK (execution_time_ms IS NULL OR execution_time_ms >= 0)
);

CREATE INDEX IF NOT EXISTS idx_workflow_steps_workflow_id ON workflow_steps (workflow_id);
CREATE INDEX IF NOT EXISTS idx_workflow_steps_status ON workflow_steps (status);
CREATE INDEX IF NOT EXISTS idx_workflow_steps_created_at ON workflow_steps (created_at);
CREATE INDEX IF NOT EXISTS idx_workflow_steps_workflow_id_step_order ON workflow_steps (workflow_id, step_order);

COMMENT ON TABLE workflow_steps IS 'Step execution history within workflows; deleted with their workflow execution.';
COMMENT ON COLUMN workflow_steps.id IS 'Step record id (UUID v4).';
COMMENT ON COLUMN workflow_steps.workflow_id IS 'The workflow execution this step belongs to (workflow_executions.id).';
COMMENT ON COLUMN workflow_steps.step_name IS 'Name of the step, e.g. generate_blake3_hash.';
COMMENT ON COLUMN workflow_steps.step_order IS 'Position of the step in its workflow, from 0.';
COMMENT ON COLUMN workflow_steps.status IS 'Step status, in either case: PENDING, RUNNING, COMPLETED, FAILED or SKIPPED.';
COMMENT ON COLUMN workflow_steps.execution_time_ms IS 'Wall time of the step in milliseconds.';
COMMENT ON COLUMN workflow_steps.step_data IS 'Inputs, outputs and context of the step (a JSON object).';
COMMENT ON COLUMN workflow_steps.error_message IS 'Error of a failed step.';
COMMENT ON COLUMN workflow_steps.created_at IS 'When the row was inserted.';
