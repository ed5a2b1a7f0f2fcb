-- Migration 005: create node_registrations
-- Purpose:     service discovery and health tracking: every bridge node registers itself with
--              its type, version, capabilities and endpoints, then heartbeats.
-- Depends on:  nothing (node_id is chosen by the node, no UUID generation needed).
-- Rollback:    005_rollback_node_registrations.sql

CREATE TABLE IF NOT EXISTS node_registrations (
    node_id          VARCHAR(255) NOT NULL,
    node_type        VARCHAR(100) NOT NULL,
    node_version     VARCHAR(50)  NOT NULL,
    capabilities     JSONB        NOT NULL DEFAULT '{}'::jsonb,
    endpoints        JSONB        NOT NULL DEFAULT '{}'::jsonb,
    metadata         JSONB        NOT NULL DEFAULT '{}'::jsonb,
    health_status    VARCHAR(20)  NOT NULL DEFAULT 'unknown',
    last_heartbeat   TIMESTAMPTZ,
    registered_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_node_registrations PRIMARY KEY (node_id),
    CONSTRAINT ck_node_registrations_node_id_not_blank CHECK (btrim(node_id) <> ''),
    CONSTRAINT ck_node_registrations_node_type_not_blank CHECK (btrim(node_type) <> ''),
    CONSTRAINT ck_node_registrations_health_status
        CHECK (health_status IN ('healthy', 'degraded', 'unhealthy', 'unknown'))
);

CREATE INDEX IF NOT EXISTS idx_node_registrations_health_status ON node_registrations (health_status);
CREATE INDEX IF NOT EXISTS idx_node_registrations_node_type ON node_registrations (node_type);
CREATE INDEX IF NOT EXISTS idx_node_registrations_last_heartbeat ON node_registrations (last_heartbeat);
CREATE INDEX IF NOT EXISTS idx_node_registrations_node_type_health_status ON node_registrations (node_type, health_status);

COMMENT ON TABLE node_registrations IS 'Service discovery and health of bridge nodes, one row per node.';
COMMENT ON COLUMN node_registrations.node_id IS 'Node id chosen by the node (e.g. service name and instance).';
COMMENT ON COLUMN node_registrations.node_type IS 'Kind of node, e.g. orchestrator, reducer, database_adapter.';
COMMENT ON COLUMN node_registrations.node_version IS 'Version of the node software.';
COMMENT ON COLUMN node_registrations.capabilities IS 'What the node can do.';
COMMENT ON COLUMN node_registrations.endpoints IS 'How to reach the node (URLs, topics).';
COMMENT ON COLUMN node_registrations.metadata IS 'Free-form registration metadata.';
COMMENT ON COLUMN node_registrations.health_status IS 'Health: healthy, degraded, unhealthy or unknown.';
COMMENT ON COLUMN node_registrations.last_heartbeat IS 'When the node last reported in; NULL before its first heartbeat.';
COMMENT ON COLUMN node_registrations.registered_at IS 'When the node first registered.';
COMMENT ON COLUMN node_registrations.updated_at IS 'When the row was last updated (set by the application).';
