-- Rollback 006: drop metadata_stamps
-- Reverses:  006_create_metadata_stamps.sql
-- Nothing references this table, so no CASCADE; its foreign key to workflow_executions goes with it.

DROP INDEX IF EXISTS idx_metadata_stamps_namespace_created_at;
DROP INDEX IF EXISTS idx_metadata_stamps_created_at;
DROP INDEX IF EXISTS idx_metadata_stamps_namespace;
DROP INDEX IF EXISTS idx_metadata_stamps_file_hash;
DROP INDEX IF EXISTS idx_metadata_stamps_workflow_id;
DROP TABLE IF EXISTS metadata_stamps;
