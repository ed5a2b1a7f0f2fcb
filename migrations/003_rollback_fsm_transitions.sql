-- Rollback 003: drop fsm_transitions
-- Reverses:  003_create_fsm_transitions.sql
-- Nothing references this table, so no CASCADE.

DROP INDEX IF EXISTS idx_fsm_transitions_from_state_to_state;
DROP INDEX IF EXISTS idx_fsm_transitions_created_at;
DROP INDEX IF EXISTS idx_fsm_transitions_entity_type;
DROP INDEX IF EXISTS idx_fsm_transitions_entity_id_entity_type;
DROP TABLE IF EXISTS fsm_transitions;
