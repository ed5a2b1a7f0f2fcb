-- Rollback 005: drop node_registrations
-- Reverses:  005_create_node_registrations.sql
-- Nothing references this table, so no CASCADE.

DROP INDEX IF EXISTS idx_node_registrations_node_type_health_status;
DROP INDEX IF EXISTS idx_node_registrations_last_heartbeat;
DROP INDEX IF EXISTS idx_node_registrations_node_type;
DROP INDEX IF EXISTS idx_node_registrations_health_status;
DROP TABLE IF EXISTS node_registrations;
