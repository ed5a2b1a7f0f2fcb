-- Migration 003: create fsm_transitions
-- Purpose:     append-only log of every state machine transition of every entity (workflows, bridge
--              reducers), for audit and replay.
-- Depends on:  extension uuid-ossp; no table (entity_id is polymorphic, so no foreign key).
-- Rollback:    003_rollback_fsm_transitions.sql
-- bridge:requires-extension uuid-ossp
--
-- The columns are exactly those of the application's ModelFSMTransition. entity_id is a UUID: the
-- application binds a uuid.UUID, which asyncpg refuses for a text column.

CREATE TABLE IF NOT EXISTS fsm_transitions (
    id                UUID         NOT NULL DEFAULT uuid_generate_v4(),
    entity_id         UUID         NOT NULL,
    entity_type       VARCHAR(100) NOT NULL,
    from_state        VARCHAR(50),
    to_state          VARCHAR(50)  NOT NULL,
    transition_event  VARCHAR(100) NOT NULL,
    transition_data   JSONB        NOT NULL DEFAULT '{}'::jsonb,
    created_at        TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_fsm_transitions PRIMARY KEY (id),
    CONSTRAINT ck_fsm_transitions_entity_type_not_blank CHECK (btrim(entity_type) <> ''),
    CONSTRAINT ck_fsm_transitions_to_state_not_blank CHECK (btrim(to_state) <> '')
);

CREATE INDEX IF NOT EXISTS idx_fsm_transitions_entity_id_entity_type ON fsm_transitions (entity_id, entity_type);
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_entity_type ON fsm_transitions (entity_type);
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_created_at ON fsm_transitions (created_at);
CREATE INDEX IF NOT EXISTS idx_fsm_transitions_from_state_to_state ON fsm_transitions (from_state, to_state);

COMMENT ON TABLE fsm_transitions IS 'Every state machine transition across entities; append-only.';
COMMENT ON COLUMN fsm_transitions.id IS 'Transition id (UUID v4).';
COMMENT ON COLUMN fsm_transitions.entity_id IS 'Id of the entity that changed state, e.g. the workflow''s correlation id.';
COMMENT ON COLUMN fsm_transitions.entity_type IS 'Kind of entity, e.g. workflow or workflow_execution.';
COMMENT ON COLUMN fsm_transitions.from_state IS 'State before the transition; NULL for the initial transition.';
COMMENT ON COLUMN fsm_transitions.to_state IS 'State after the transition, in the case the application writes it.';
COMMENT ON COLUMN fsm_transitions.transition_event IS 'Event that triggered the transition, e.g. start_processing.';
COMMENT ON COLUMN fsm_transitions.transition_data IS 'Context of the transition (a JSON object).';
COMMENT ON COLUMN fsm_transitions.created_at IS 'When the transition happened.';
