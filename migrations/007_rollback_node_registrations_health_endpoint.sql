-- Rollback 007: drop node_registrations.health_endpoint
-- Reverses:  007_add_node_registrations_health_endpoint.sql
-- Loses:     every node's health endpoint; the registry writes them again when nodes re-register.

ALTER TABLE node_registrations DROP COLUMN IF EXISTS health_endpoint;
