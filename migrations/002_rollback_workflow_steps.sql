-- Rollback 002: drop workflow_steps
-- Reverses:  002_create_workflow_steps.sql
-- Nothing references this table, so no CASCADE: a view built on it makes this fail loudly
-- instead of vanishing. Its own foreign key to workflow_executions goes with it.

DROP INDEX IF EXISTS idx_workflow_steps_workflow_id_step_order;
DROP INDEX IF EXISTS idx_workflow_steps_created_at;
DROP INDEX IF EXISTS idx_workflow_steps_status;
DROP INDEX IF EXISTS idx_workflow_steps_workflow_id;
DROP TABLE IF EXISTS workflow_steps;
