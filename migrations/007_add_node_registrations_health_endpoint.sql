-- Migration 007: add node_registrations.health_endpoint
-- Purpose:     the registry's UPSERT, RETURNING and reads name health_endpoint (the application's
--              own migration 012 added it): an optional URL the registry polls for the node's health.
-- Depends on:  005 node_registrations.
-- Rollback:    007_rollback_node_registrations_health_endpoint.sql
--
-- Safe on a live table: a nullable column without a default is a catalog-only change, no rewrite
-- and no scan. It still takes a brief ACCESS EXCLUSIVE lock, so bridge-db's lock_timeout and
-- retries keep it from queueing behind a long transaction while blocking the registry's writes.
-- No index: nothing in the application looks nodes up by their health endpoint.

-- VARCHAR(500) as in the application's own schema (its 012) and model (max_length=500).
-- squawk-ignore prefer-text-field
ALTER TABLE node_registrations ADD COLUMN IF NOT EXISTS health_endpoint VARCHAR(500);

COMMENT ON COLUMN node_registrations.health_endpoint IS 'Optional health check URL of the node, e.g. http://metadata-service:8053/health (at most 500 characters).';
