-- Migration 005: create node_registrations
-- Purpose:     service discovery and health tracking: every bridge node registers itself with
--              its type, version, capabilities and endpoints, then heartbeats.
-- Depends on:  nothing (node_id is chosen by the node, no UUID generation needed).
-- Rollback:    005_rollback_node_registrations.sql
-- Later:       007 adds health_endpoint.
--
-- The columns are those of the application's ModelNodeHeartbeat. health_status is written as
-- UNKNOWN (the default), HEALTHY, DEGRADED, UNHEALTHY or OFFLINE by the entities and registry, and
-- as critical or recovering by heartbeat events, so the CHECK compares upper(health_status) and
-- the column is as wide as the application allows (50).

CREATE TABLE IF NOT EXISTS node_registrations (
    node_id          VARCHAR(255) NOT NULL,
    node_type        VARCHAR(100) NOT NULL,
    node_version     VARCHAR(50)  NOT NULL,
    capabilities     JSONB        NOT NULL DEFAULT '{}'::jsonb,
    endpoints        JSONB        NOT NULL DEFAULT '{}'::jsonb,
    metadata         JSONB        NOT NULL DEFAULT '{}'::jsonb,
    health_status    VARCHAR(50)  NOT NULL DEFAULT 'UNKNOWN',
    last_heartbeat   TIMESTAMPTZ,
    registered_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_node_registrations PRIMARY KEY (node_id),
    CONSTRAINT ck_node_registrations_node_id_not_blank CHECK (btrim(node_id) <> ''),
    CONSTRAINT ck_node_registrations_node_type_not_blank CHECK (btrim(node_type) <> ''),
    CONSTRAINT ck_node_registrations_health_status
        CHECK (upper(health_status) IN
               ('UNKNOWN', 'HEALTHY', 'DEGRADED', 'UNHEALTHY', 'CRITICAL', 'RECOVERING', 'OFFLINE'))
);

CREATE INDEX IF NOT EXISTS idx_node_registrations_health_status ON node_registrations (health_status);
CREATE INDEX IF NOT EXISTS idx_node_registrations_node_type ON node_registrations (node_type);
CREATE INDEX IF NOT EXISTS idx_node_registrations_last_heartbeat ON node_registrations (last_heartbeat);
CREATE INDEX IF NOT EXISTS idx_node_registrations_node_type_health_status ON node_registrations (node_type, health_status);

COMMENT ON TABLE node_registrations IS 'Service discovery and health of bridge nodes, one row per node.';
COMMENT ON COLUMN node_registrations.node_id IS 'Node id chosen by the node (e.g. service name and instance); the UPSERT conflict target.';
COMMENT ON COLUMN node_registrations.node_type IS 'Kind of node, e.g. effect, orchestrator, reducer.';
COMMENT ON COLUMN node_registrations.node_version IS 'Version of the node software (the registry falls back to 1.0.0).';
COMMENT ON COLUMN node_registrations.capabilities IS 'What the node can do (a JSON object).';
COMMENT ON COLUMN node_registrations.endpoints IS 'How to reach the node (URLs, topics; a JSON object).';
COMMENT ON COLUMN node_registrations.metadata IS 'Free-form registration metadata (a JSON object).';
COMMENT ON COLUMN node_registrations.health_status IS 'Health, in either case: UNKNOWN, HEALTHY, DEGRADED, UNHEALTHY, CRITICAL, RECOVERING or OFFLINE.';
COMMENT ON COLUMN node_registrations.last_heartbeat IS 'When the node last reported in; NULL before its first heartbeat.';
COMMENT ON COLUMN node_registrations.registered_at IS 'When the node first registered; kept on re-registration.';
COMMENT ON COLUMN node_registrations.updated_at IS 'When the row was last updated (set by the application).';
