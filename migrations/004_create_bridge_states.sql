-- Migration 004: create bridge_states
-- Purpose:     aggregation state of each bridge reducer node: its FSM state, running totals and
--              when it last aggregated. One row per bridge, updated in place (the application
--              UPSERTs on bridge_id).
-- Depends on:  extension uuid-ossp; no table.
-- Rollback:    004_rollback_bridge_states.sql
-- bridge:requires-extension uuid-ossp
--
-- The columns are exactly those of the application's ModelBridgeState (its reads forbid unknown
-- columns). current_fsm_state has no list of values: the application writes idle, aggregating,
-- IDLE, PROCESSING, ... in both cases, and its reducer's states are its own to extend.

CREATE TABLE IF NOT EXISTS bridge_states (
    bridge_id                   UUID         NOT NULL DEFAULT uuid_generate_v4(),
    namespace                   VARCHAR(255) NOT NULL,
    total_workflows_processed   BIGINT       NOT NULL DEFAULT 0,
    total_items_aggregated      BIGINT       NOT NULL DEFAULT 0,
    aggregation_metadata        JSONB        NOT NULL DEFAULT '{}'::jsonb,
    current_fsm_state           VARCHAR(50)  NOT NULL DEFAULT 'IDLE',
    last_aggregation_timestamp  TIMESTAMPTZ,
    created_at                  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_bridge_states PRIMARY KEY (bridge_id),
    CONSTRAINT ck_bridge_states_namespace_not_blank CHECK (btrim(namespace) <> ''),
    CONSTRAINT ck_bridge_states_fsm_state_not_blank CHECK (btrim(current_fsm_state) <> ''),
    CONSTRAINT ck_bridge_states_totals_non_negative
        CHECK (total_workflows_processed >= 0 AND total_items_aggregated >= 0)
);

CREATE INDEX IF NOT EXISTS idx_bridge_states_namespace ON bridge_states (namespace);
CREATE INDEX IF NOT EXISTS idx_bridge_states_current_fsm_state ON bridge_states (current_fsm_state);
CREATE INDEX IF NOT EXISTS idx_bridge_states_last_aggregation_timestamp ON bridge_states (last_aggregation_timestamp);
CREATE INDEX IF NOT EXISTS idx_bridge_states_namespace_current_fsm_state ON bridge_states (namespace, current_fsm_state);

COMMENT ON TABLE bridge_states IS 'Aggregation state of bridge reducer nodes, one row per bridge.';
COMMENT ON COLUMN bridge_states.bridge_id IS 'Bridge reducer id (UUID); the UPSERT conflict target.';
COMMENT ON COLUMN bridge_states.namespace IS 'Namespace the bridge aggregates for.';
COMMENT ON COLUMN bridge_states.total_workflows_processed IS 'Workflows aggregated so far.';
COMMENT ON COLUMN bridge_states.total_items_aggregated IS 'Items aggregated so far.';
COMMENT ON COLUMN bridge_states.aggregation_metadata IS 'Aggregation details (per-type counts, windows; a JSON object).';
COMMENT ON COLUMN bridge_states.current_fsm_state IS 'Current state of the reducer state machine, in the case the application writes it.';
COMMENT ON COLUMN bridge_states.last_aggregation_timestamp IS 'When the reducer last aggregated; NULL before the first time.';
COMMENT ON COLUMN bridge_states.created_at IS 'When the row was inserted.';
COMMENT ON COLUMN bridge_states.updated_at IS 'When the row was last updated (set by the application).';
