-- Migration 006: create metadata_stamps
-- Purpose:     audit trail of metadata stamping operations: which file (by hash) was stamped,
--              in which namespace, with what stamp, and by which workflow if any.
-- Depends on:  001 workflow_executions (optional foreign key workflow_id, ON DELETE SET NULL: the
--              audit row outlives the workflow); extension uuid-ossp.
-- Rollback:    006_rollback_metadata_stamps.sql
-- bridge:requires-extension uuid-ossp

CREATE TABLE IF NOT EXISTS metadata_stamps (
    id                 UUID         NOT NULL DEFAULT uuid_generate_v4(),
    workflow_id        UUID,
    file_hash          VARCHAR(128) NOT NULL,
    file_path          TEXT,
    file_size_bytes    BIGINT,
    content_type       VARCHAR(255),
    namespace          VARCHAR(255) NOT NULL,
    stamp_data         JSONB        NOT NULL,
    protocol_version   VARCHAR(20)  NOT NULL DEFAULT '1.0',
    intelligence_data  JSONB,
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_metadata_stamps PRIMARY KEY (id),
    CONSTRAINT fk_metadata_stamps_workflow_id FOREIGN KEY (workflow_id)
        REFERENCES workflow_executions (id) ON DELETE SET NULL,
    CONSTRAINT ck_metadata_stamps_file_hash CHECK (file_hash ~ '^[0-9a-f]{32,128}$'),
    CONSTRAINT ck_metadata_stamps_file_size CHECK (file_size_bytes IS NULL OR file_size_bytes >= 0),
    CONSTRAINT ck_metadata_stamps_namespace_not_blank CHECK (btrim(namespace) <> '')
);

CREATE INDEX IF NOT EXISTS idx_metadata_stamps_workflow_id ON metadata_stamps (workflow_id);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_file_hash ON metadata_stamps (file_hash);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_namespace ON metadata_stamps (namespace);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_created_at ON metadata_stamps (created_at);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_namespace_created_at ON metadata_stamps (namespace, created_at);

COMMENT ON TABLE metadata_stamps IS 'Audit trail of metadata stamping operations; rows outlive their workflow.';
COMMENT ON COLUMN metadata_stamps.id IS 'Stamp record id (UUID v4).';
COMMENT ON COLUMN metadata_stamps.workflow_id IS 'Workflow execution that stamped the file; NULL if none or deleted since.';
COMMENT ON COLUMN metadata_stamps.file_hash IS 'Content hash of the stamped file, lower-case hex (32 to 128 digits).';
COMMENT ON COLUMN metadata_stamps.file_path IS 'Path of the file when it was stamped.';
COMMENT ON COLUMN metadata_stamps.file_size_bytes IS 'Size of the file in bytes.';
COMMENT ON COLUMN metadata_stamps.content_type IS 'MIME type of the file.';
COMMENT ON COLUMN metadata_stamps.namespace IS 'Namespace the stamp belongs to.';
COMMENT ON COLUMN metadata_stamps.stamp_data IS 'The stamp itself.';
COMMENT ON COLUMN metadata_stamps.protocol_version IS 'Version of the stamping protocol.';
COMMENT ON COLUMN metadata_stamps.intelligence_data IS 'Optional analysis results attached to the stamp.';
COMMENT ON COLUMN metadata_stamps.created_at IS 'When the file was stamped.';
