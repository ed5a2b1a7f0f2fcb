-- Rollback 004: drop bridge_states
-- Reverses:  004_create_bridge_states.sql
-- Nothing references this table, so no CASCADE.

DROP INDEX IF EXISTS idx_bridge_states_namespace_current_fsm_state;
DROP INDEX IF EXISTS idx_bridge_states_last_aggregation_timestamp;
DROP INDEX IF EXISTS idx_bridge_states_current_fsm_state;
DROP INDEX IF EXISTS idx_bridge_states_namespace;
DROP TABLE IF EXISTS bridge_states;
