-- Conform a database built by the OmniNode Bridge application's own 001-006 SQL to this project's
-- 001-006, in place, keeping every row. See migrations/README.md, "Adopting a database the application
-- built", for the whole procedure; in short:
--
--   bridge-db backup --env E                         # a verified dump first
--   bridge-db migrate --env E --to 6                 # records 001-006 as adopted; adds our index names
--   bridge-db verify --env E                         # lists every difference this script removes
--   psql -X -1 -v ON_ERROR_STOP=1 -d <db> -f scripts/adopt_application_v1.sql
--   bridge-db verify --env E && bridge-db migrate --env E
--
-- Run it in one transaction (-1): if a row breaks a project CHECK (a state outside the application's
-- vocabulary, a negative duration), the VALIDATE names the constraint and nothing is changed.
-- Safe to run again. Rewrites workflow_executions, workflow_steps and bridge_states once (INTEGER to
-- BIGINT) under an ACCESS EXCLUSIVE lock: run it in a maintenance window, not under live traffic.

SET lock_timeout = '10s';

CREATE FUNCTION pg_temp.rename_constraint(tbl regclass, old_name text, new_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND conname = old_name) THEN
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', tbl, old_name, new_name);
    END IF;
END $$;

CREATE FUNCTION pg_temp.add_check(tbl regclass, con_name text, expr text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND conname = con_name) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s) NOT VALID', tbl, con_name, expr);
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, con_name);
    END IF;
END $$;

-- The application built some indexes DESC under the names the project uses ascending: drop only those,
-- so that a database already in the project's shape (built by its migrations, or adopted before) keeps
-- its indexes instead of rebuilding them under an ACCESS EXCLUSIVE lock held to the end of the script.
CREATE FUNCTION pg_temp.drop_desc_index(idx text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass(idx) IS NOT NULL AND pg_get_indexdef(to_regclass(idx)) LIKE '% DESC%' THEN
        EXECUTE format('DROP INDEX %I', idx);
    END IF;
END $$;

-- workflow_executions ---------------------------------------------------------------------------
SELECT pg_temp.rename_constraint('workflow_executions', 'workflow_executions_pkey', 'pk_workflow_executions');
SELECT pg_temp.rename_constraint('workflow_executions', 'workflow_executions_correlation_id_key',
                                 'uq_workflow_executions_correlation_id');
ALTER TABLE workflow_executions DROP CONSTRAINT IF EXISTS workflow_executions_execution_time_ms_check;
UPDATE workflow_executions SET metadata = '{}' WHERE metadata IS NULL;
UPDATE workflow_executions SET created_at = started_at WHERE created_at IS NULL;
UPDATE workflow_executions SET updated_at = created_at WHERE updated_at IS NULL;
ALTER TABLE workflow_executions
    ALTER COLUMN execution_time_ms TYPE BIGINT,
    ALTER COLUMN current_state SET DEFAULT 'PENDING',
    ALTER COLUMN started_at SET DEFAULT now(),
    ALTER COLUMN metadata SET DEFAULT '{}'::jsonb,
    ALTER COLUMN metadata SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL;
SELECT pg_temp.add_check('workflow_executions', 'ck_workflow_executions_current_state',
    $$upper(current_state) IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')$$);
SELECT pg_temp.add_check('workflow_executions', 'ck_workflow_executions_namespace_not_blank', $$btrim(namespace) <> ''$$);
SELECT pg_temp.add_check('workflow_executions', 'ck_workflow_executions_execution_time',
    'execution_time_ms IS NULL OR execution_time_ms >= 0');
DROP INDEX IF EXISTS idx_workflow_executions_correlation_id;  -- the UNIQUE constraint's index already is one
DROP INDEX IF EXISTS idx_workflow_executions_state;
SELECT pg_temp.drop_desc_index('idx_workflow_executions_started_at');  -- (started_at DESC) becomes (started_at)
CREATE INDEX IF NOT EXISTS idx_workflow_executions_namespace ON workflow_executions (namespace);
CREATE INDEX IF NOT EXISTS idx_workflow_executions_current_state ON workflow_executions (current_state);
CREATE INDEX IF NOT EXISTS idx_workflow_executions_started_at ON workflow_executions (started_at);

-- workflow_steps --------------------------------------------------------------------------------
SELECT pg_temp.rename_constraint('workflow_steps', 'workflow_steps_pkey', 'pk_workflow_steps');
SELECT pg_temp.rename_constraint('workflow_steps', 'workflow_steps_workflow_id_fkey', 'fk_workflow_steps_workflow_id');
SELECT pg_temp.rename_constraint('workflow_steps', 'workflow_steps_step_order_check', 'ck_workflow_steps_step_order');
ALTER TABLE workflow_steps DROP CONSTRAINT IF EXISTS workflow_steps_execution_time_ms_check;
UPDATE workflow_steps SET step_data = '{}' WHERE step_data IS NULL;
UPDATE workflow_steps SET created_at = now() WHERE created_at IS NULL;
ALTER TABLE workflow_steps
    ALTER COLUMN step_name TYPE VARCHAR(255),
    ALTER COLUMN execution_time_ms TYPE BIGINT,
    ALTER COLUMN status SET DEFAULT 'PENDING',
    ALTER COLUMN step_data SET DEFAULT '{}'::jsonb,
    ALTER COLUMN step_data SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL;
SELECT pg_temp.add_check('workflow_steps', 'ck_workflow_steps_status',
    $$upper(status) IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'SKIPPED')$$);
SELECT pg_temp.add_check('workflow_steps', 'ck_workflow_steps_step_order', 'step_order >= 0');
SELECT pg_temp.add_check('workflow_steps', 'ck_workflow_steps_execution_time',
    'execution_time_ms IS NULL OR execution_time_ms >= 0');
DROP INDEX IF EXISTS idx_workflow_steps_workflow_id_order;
SELECT pg_temp.drop_desc_index('idx_workflow_steps_created_at');  -- (created_at DESC) becomes (created_at)
CREATE INDEX IF NOT EXISTS idx_workflow_steps_workflow_id ON workflow_steps (workflow_id);
CREATE INDEX IF NOT EXISTS idx_workflow_steps_status ON workflow_steps (status);
CREATE INDEX IF NOT EXISTS idx_workflow_steps_created_at ON workflow_steps (created_at);
CREATE INDEX IF NOT EXISTS idx_workflow_steps_workflow_id_step_order ON workflow_steps (workflow_id, step_order);

-- fsm_transitions -------------------------------------------------------------------------------
SELECT pg_temp.rename_constraint('fsm_transitions', 'fsm_transitions_pkey', 'pk_fsm_transitions');
UPDATE fsm_transitions SET transition_data = '{}' WHERE transition_data IS NULL;
UPDATE fsm_transitions SET created_at = now() WHERE created_at IS NULL;
ALTER TABLE fsm_transitions
    ALTER COLUMN transition_data SET DEFAULT '{}'::jsonb,
    ALTER COLUMN transition_data SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL;
SELECT pg_temp.add_check('fsm_transitions', 'ck_fsm_transitions_entity_type_not_blank', $$btrim(entity_type) <> ''$$);
SELECT pg_temp.add_check('fsm_transitions', 'ck_fsm_transitions_to_state_not_blank', $$btrim(to_state) <> ''$$);
DROP INDEX IF EXISTS idx_fsm_transitions_entity;
DROP INDEX IF EXISTS idx_fsm_transitions_states;
SELECT pg_temp.drop_desc_index('idx_fsm_transitions_created_at');  -- (created_at DESC) becomes (created_at)
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_entity_id_entity_type ON fsm_transitions (entity_id, entity_type);
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_entity_type ON fsm_transitions (entity_type);
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_created_at ON fsm_transitions (created_at);
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_from_state_to_state ON fsm_transitions (from_state, to_state);

-- bridge_states ---------------------------------------------------------------------------------
SELECT pg_temp.rename_constraint('bridge_states', 'bridge_states_pkey', 'pk_bridge_states');
ALTER TABLE bridge_states DROP CONSTRAINT IF EXISTS bridge_states_total_workflows_processed_check;
ALTER TABLE bridge_states DROP CONSTRAINT IF EXISTS bridge_states_total_items_aggregated_check;
UPDATE bridge_states SET aggregation_metadata = '{}' WHERE aggregation_metadata IS NULL;
UPDATE bridge_states SET created_at = now() WHERE created_at IS NULL;
UPDATE bridge_states SET updated_at = created_at WHERE updated_at IS NULL;
ALTER TABLE bridge_states
    ALTER COLUMN bridge_id SET DEFAULT uuid_generate_v4(),
    ALTER COLUMN total_workflows_processed TYPE BIGINT,
    ALTER COLUMN total_items_aggregated TYPE BIGINT,
    ALTER COLUMN aggregation_metadata SET DEFAULT '{}'::jsonb,
    ALTER COLUMN aggregation_metadata SET NOT NULL,
    ALTER COLUMN current_fsm_state SET DEFAULT 'IDLE',
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL;
SELECT pg_temp.add_check('bridge_states', 'ck_bridge_states_namespace_not_blank', $$btrim(namespace) <> ''$$);
SELECT pg_temp.add_check('bridge_states', 'ck_bridge_states_fsm_state_not_blank', $$btrim(current_fsm_state) <> ''$$);
SELECT pg_temp.add_check('bridge_states', 'ck_bridge_states_totals_non_negative',
    'total_workflows_processed >= 0 AND total_items_aggregated >= 0');
DROP INDEX IF EXISTS idx_bridge_states_fsm_state;
DROP INDEX IF EXISTS idx_bridge_states_last_aggregation;
DROP INDEX IF EXISTS idx_bridge_states_namespace_state;
CREATE INDEX IF NOT EXISTS idx_bridge_states_namespace ON bridge_states (namespace);
CREATE INDEX IF NOT EXISTS idx_bridge_states_current_fsm_state ON bridge_states (current_fsm_state);
CREATE INDEX IF NOT EXISTS idx_bridge_states_last_aggregation_timestamp ON bridge_states (last_aggregation_timestamp);
CREATE INDEX IF NOT EXISTS idx_bridge_states_namespace_current_fsm_state ON bridge_states (namespace, current_fsm_state);

-- node_registrations ----------------------------------------------------------------------------
SELECT pg_temp.rename_constraint('node_registrations', 'node_registrations_pkey', 'pk_node_registrations');
UPDATE node_registrations SET capabilities = '{}' WHERE capabilities IS NULL;
UPDATE node_registrations SET endpoints = '{}' WHERE endpoints IS NULL;
UPDATE node_registrations SET metadata = '{}' WHERE metadata IS NULL;
UPDATE node_registrations SET registered_at = now() WHERE registered_at IS NULL;
UPDATE node_registrations SET updated_at = registered_at WHERE updated_at IS NULL;
ALTER TABLE node_registrations
    ALTER COLUMN capabilities SET DEFAULT '{}'::jsonb,
    ALTER COLUMN capabilities SET NOT NULL,
    ALTER COLUMN endpoints SET DEFAULT '{}'::jsonb,
    ALTER COLUMN endpoints SET NOT NULL,
    ALTER COLUMN metadata SET DEFAULT '{}'::jsonb,
    ALTER COLUMN metadata SET NOT NULL,
    ALTER COLUMN registered_at SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL;
SELECT pg_temp.add_check('node_registrations', 'ck_node_registrations_node_id_not_blank', $$btrim(node_id) <> ''$$);
SELECT pg_temp.add_check('node_registrations', 'ck_node_registrations_node_type_not_blank', $$btrim(node_type) <> ''$$);
SELECT pg_temp.add_check('node_registrations', 'ck_node_registrations_health_status',
    $$upper(health_status) IN ('UNKNOWN', 'HEALTHY', 'DEGRADED', 'UNHEALTHY', 'CRITICAL', 'RECOVERING', 'OFFLINE')$$);
DROP INDEX IF EXISTS idx_node_registrations_health;
DROP INDEX IF EXISTS idx_node_registrations_type;
DROP INDEX IF EXISTS idx_node_registrations_type_health;
DROP INDEX IF EXISTS idx_node_registrations_health_endpoint;  -- the application's 012: nothing looks nodes up by it
SELECT pg_temp.drop_desc_index('idx_node_registrations_last_heartbeat');  -- (last_heartbeat DESC) becomes (last_heartbeat)
CREATE INDEX IF NOT EXISTS idx_node_registrations_health_status ON node_registrations (health_status);
CREATE INDEX IF NOT EXISTS idx_node_registrations_node_type ON node_registrations (node_type);
CREATE INDEX IF NOT EXISTS idx_node_registrations_last_heartbeat ON node_registrations (last_heartbeat);
CREATE INDEX IF NOT EXISTS idx_node_registrations_node_type_health_status ON node_registrations (node_type, health_status);

-- metadata_stamps -------------------------------------------------------------------------------
SELECT pg_temp.rename_constraint('metadata_stamps', 'metadata_stamps_pkey', 'pk_metadata_stamps');
SELECT pg_temp.rename_constraint('metadata_stamps', 'metadata_stamps_workflow_id_fkey', 'fk_metadata_stamps_workflow_id');
UPDATE metadata_stamps SET created_at = now() WHERE created_at IS NULL;
ALTER TABLE metadata_stamps ALTER COLUMN created_at SET NOT NULL;
SELECT pg_temp.add_check('metadata_stamps', 'ck_metadata_stamps_file_hash', $$file_hash ~ '^[0-9A-Fa-f]{1,128}$'$$);
SELECT pg_temp.add_check('metadata_stamps', 'ck_metadata_stamps_namespace_not_blank', $$btrim(namespace) <> ''$$);
SELECT pg_temp.drop_desc_index('idx_metadata_stamps_created_at');  -- (created_at DESC) becomes (created_at)
SELECT pg_temp.drop_desc_index('idx_metadata_stamps_namespace_created_at');  -- (namespace, created_at DESC) likewise
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_workflow_id ON metadata_stamps (workflow_id);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_file_hash ON metadata_stamps (file_hash);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_namespace ON metadata_stamps (namespace);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_created_at ON metadata_stamps (created_at);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_namespace_created_at ON metadata_stamps (namespace, created_at);
