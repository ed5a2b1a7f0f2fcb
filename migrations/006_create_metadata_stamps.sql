-- Migration 006: create metadata_stamps
-- Purpose:     audit trail of metadata stamping operations: which file (by hash) was stamped,
--              in which namespace, with what stamp, and by which workflow if any.
-- Depends on:  001 workflow_executions (optional foreign key workflow_id, ON DELETE SET NULL: the
--              audit row outlives the workflow); extension uuid-ossp.
-- Rollback:    006_rollback_metadata_stamps.sql
-- bridge:requires-extension uuid-ossp
--
-- The columns are exactly those of the application's ModelMetadataStamp (its reads forbid unknown
-- columns). file_hash is hex: the runtime entity sends 64 lower-case digits (BLAKE3), an older
-- entity accepts 1 to 128 digits in either case; the CHECK accepts both.

CREATE TABLE IF NOT EXISTS metadata_stamps (
    id                 UUID         NOT NULL DEFAULT uuid_generate_v4(),
    workflow_id        UUID,
    file_hash          VARCHAR(128) NOT NULL,
    stamp_data         JSONB        NOT NULL,
    namespace          VARCHAR(255) NOT NULL,
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_metadata_stamps PRIMARY KEY (id),
    CONSTRAINT fk_metadata_stamps_workflow_id FOREIGN KEY (workflow_id)
        REFERENCES workflow_executions (id) ON DELETE SET NULL,
    CONSTRAINT ck_metadata_stamps_file_hash CHECK (file_hash ~ '^[0-9A-Fa-f]{1,128}$'),
    CONSTRAINT ck_metadata_stamps_namespace_not_blank CHECK (btrim(namespace) <> '')
);

CREATE INDEX IF NOT EXISTS idx_metadata_stamps_workflow_id ON metadata_stamps (workflow_id);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_file_hash ON metadata_stamps (file_hash);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_namespace ON metadata_stamps (namespace);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_created_at ON metadata_stamps (created_at);
CREATE INDEX IF NOT EXISTS idx_metadata_stamps_namespace_created_at ON metadata_stamps (namespace, created_at);

COMMENT ON TABLE metadata_stamps IS 'Audit trail of metadata stamping operations; rows outlive their workflow.';
COMMENT ON COLUMN metadata_stamps.id IS 'Stamp record id (UUID v4); the application reads it back with RETURNING id.';
COMMENT ON COLUMN metadata_stamps.workflow_id IS 'Workflow execution that stamped the file; NULL if none or deleted since.';
COMMENT ON COLUMN metadata_stamps.file_hash IS 'Content hash of the stamped file, hex (the application sends 64-digit BLAKE3).';
COMMENT ON COLUMN metadata_stamps.stamp_data IS 'The stamp itself (a JSON object).';
COMMENT ON COLUMN metadata_stamps.namespace IS 'Namespace the stamp belongs to.';
COMMENT ON COLUMN metadata_stamps.created_at IS 'When the file was stamped.';
