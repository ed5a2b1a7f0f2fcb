-- Rollback 001: drop workflow_executions
-- Reverses:  001_create_workflow_executions.sql
-- Run after: 006 and 002 are rolled back (their foreign keys reference this table); CASCADE drops
--            those constraints anyway if this file is run out of order by hand.
-- The extension uuid-ossp is left in place: other objects may use it.

DROP INDEX IF EXISTS idx_workflow_executions_started_at;
DROP INDEX IF EXISTS idx_workflow_executions_current_state;
DROP INDEX IF EXISTS idx_workflow_executions_namespace;
DROP TABLE IF EXISTS workflow_executions CASCADE;
