-- schema.sql: the schema the migrations build (pg_dump --schema-only, normalised), written by
-- bridge-db after migrate and rollback on dev. Do not edit: run migrate. CI compares a database
-- with it: bridge-db verify --schema.

CREATE TABLE public.bridge_states (
    bridge_id uuid DEFAULT public.uuid_generate_v4() NOT NULL,
    namespace character varying(255) NOT NULL,
    total_workflows_processed bigint DEFAULT 0 NOT NULL,
    total_items_aggregated bigint DEFAULT 0 NOT NULL,
    aggregation_metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    current_fsm_state character varying(50) DEFAULT 'IDLE'::character varying NOT NULL,
    last_aggregation_timestamp timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT ck_bridge_states_fsm_state_not_blank CHECK ((btrim((current_fsm_state)::text) <> ''::text)),
    CONSTRAINT ck_bridge_states_namespace_not_blank CHECK ((btrim((namespace)::text) <> ''::text)),
    CONSTRAINT ck_bridge_states_totals_non_negative CHECK (((total_workflows_processed >= 0) AND (total_items_aggregated >= 0)))
);

COMMENT ON TABLE public.bridge_states IS 'Aggregation state of bridge reducer nodes, one row per bridge.';

COMMENT ON COLUMN public.bridge_states.bridge_id IS 'Bridge reducer id (UUID); the UPSERT conflict target.';

COMMENT ON COLUMN public.bridge_states.namespace IS 'Namespace the bridge aggregates for.';

COMMENT ON COLUMN public.bridge_states.total_workflows_processed IS 'Workflows aggregated so far.';

COMMENT ON COLUMN public.bridge_states.total_items_aggregated IS 'Items aggregated so far.';

COMMENT ON COLUMN public.bridge_states.aggregation_metadata IS 'Aggregation details (per-type counts, windows; a JSON object).';

COMMENT ON COLUMN public.bridge_states.current_fsm_state IS 'Current state of the reducer state machine, in the case the application writes it.';

COMMENT ON COLUMN public.bridge_states.last_aggregation_timestamp IS 'When the reducer last aggregated; NULL before the first time.';

COMMENT ON COLUMN public.bridge_states.created_at IS 'When the row was inserted.';

COMMENT ON COLUMN public.bridge_states.updated_at IS 'When the row was last updated (set by the application).';

CREATE TABLE public.fsm_transitions (
    id uuid DEFAULT public.uuid_generate_v4() NOT NULL,
    entity_id uuid NOT NULL,
    entity_type character varying(100) NOT NULL,
    from_state character varying(50),
    to_state character varying(50) NOT NULL,
    transition_event character varying(100) NOT NULL,
    transition_data jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT ck_fsm_transitions_entity_type_not_blank CHECK ((btrim((entity_type)::text) <> ''::text)),
    CONSTRAINT ck_fsm_transitions_to_state_not_blank CHECK ((btrim((to_state)::text) <> ''::text))
);

COMMENT ON TABLE public.fsm_transitions IS 'Every state machine transition across entities; append-only.';

COMMENT ON COLUMN public.fsm_transitions.id IS 'Transition id (UUID v4).';

COMMENT ON COLUMN public.fsm_transitions.entity_id IS 'Id of the entity that changed state, e.g. the workflow''s correlation id.';

COMMENT ON COLUMN public.fsm_transitions.entity_type IS 'Kind of entity, e.g. workflow or workflow_execution.';

COMMENT ON COLUMN public.fsm_transitions.from_state IS 'State before the transition; NULL for the initial transition.';

COMMENT ON COLUMN public.fsm_transitions.to_state IS 'State after the transition, in the case the application writes it.';

COMMENT ON COLUMN public.fsm_transitions.transition_event IS 'Event that triggered the transition, e.g. start_processing.';

COMMENT ON COLUMN public.fsm_transitions.transition_data IS 'Context of the transition (a JSON object).';

COMMENT ON COLUMN public.fsm_transitions.created_at IS 'When the transition happened.';

CREATE TABLE public.metadata_stamps (
    id uuid DEFAULT public.uuid_generate_v4() NOT NULL,
    workflow_id uuid,
    file_hash character varying(128) NOT NULL,
    stamp_data jsonb NOT NULL,
    namespace character varying(255) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT ck_metadata_stamps_file_hash CHECK (((file_hash)::text ~ '^[0-9A-Fa-f]{1,128}$'::text)),
    CONSTRAINT ck_metadata_stamps_namespace_not_blank CHECK ((btrim((namespace)::text) <> ''::text))
);

COMMENT ON TABLE public.metadata_stamps IS 'Audit trail of metadata stamping operations; rows outlive their workflow.';

COMMENT ON COLUMN public.metadata_stamps.id IS 'Stamp record id (UUID v4); the application reads it back with RETURNING id.';

COMMENT ON COLUMN public.metadata_stamps.workflow_id IS 'Workflow execution that stamped the file; NULL if none or deleted since.';

COMMENT ON COLUMN public.metadata_stamps.file_hash IS 'Content hash of the stamped file, hex (the application sends 64-digit BLAKE3).';

COMMENT ON COLUMN public.metadata_stamps.stamp_data IS 'The stamp itself (a JSON object).';

COMMENT ON COLUMN public.metadata_stamps.namespace IS 'Namespace the stamp belongs to.';

COMMENT ON COLUMN public.metadata_stamps.created_at IS 'When the file was stamped.';

CREATE TABLE public.node_registrations (
    node_id character varying(255) NOT NULL,
    node_type character varying(100) NOT NULL,
    node_version character varying(50) NOT NULL,
    capabilities jsonb DEFAULT '{}'::jsonb NOT NULL,
    endpoints jsonb DEFAULT '{}'::jsonb NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    health_status character varying(50) DEFAULT 'UNKNOWN'::character varying NOT NULL,
    last_heartbeat timestamp with time zone,
    registered_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    health_endpoint character varying(500),
    CONSTRAINT ck_node_registrations_health_status CHECK ((upper((health_status)::text) = ANY (ARRAY['UNKNOWN'::text, 'HEALTHY'::text, 'DEGRADED'::text, 'UNHEALTHY'::text, 'CRITICAL'::text, 'RECOVERING'::text, 'OFFLINE'::text]))),
    CONSTRAINT ck_node_registrations_node_id_not_blank CHECK ((btrim((node_id)::text) <> ''::text)),
    CONSTRAINT ck_node_registrations_node_type_not_blank CHECK ((btrim((node_type)::text) <> ''::text))
);

COMMENT ON TABLE public.node_registrations IS 'Service discovery and health of bridge nodes, one row per node.';

COMMENT ON COLUMN public.node_registrations.node_id IS 'Node id chosen by the node (e.g. service name and instance); the UPSERT conflict target.';

COMMENT ON COLUMN public.node_registrations.node_type IS 'Kind of node, e.g. effect, orchestrator, reducer.';

COMMENT ON COLUMN public.node_registrations.node_version IS 'Version of the node software (the registry falls back to 1.0.0).';

COMMENT ON COLUMN public.node_registrations.capabilities IS 'What the node can do (a JSON object).';

COMMENT ON COLUMN public.node_registrations.endpoints IS 'How to reach the node (URLs, topics; a JSON object).';

COMMENT ON COLUMN public.node_registrations.metadata IS 'Free-form registration metadata (a JSON object).';

COMMENT ON COLUMN public.node_registrations.health_status IS 'Health, in either case: UNKNOWN, HEALTHY, DEGRADED, UNHEALTHY, CRITICAL, RECOVERING or OFFLINE.';

COMMENT ON COLUMN public.node_registrations.last_heartbeat IS 'When the node last reported in; NULL before its first heartbeat.';

COMMENT ON COLUMN public.node_registrations.registered_at IS 'When the node first registered; kept on re-registration.';

COMMENT ON COLUMN public.node_registrations.updated_at IS 'When the row was last updated (set by the application).';

COMMENT ON COLUMN public.node_registrations.health_endpoint IS 'Optional health check URL of the node, e.g. http://metadata-service:8053/health (at most 500 characters).';

CREATE TABLE public.workflow_executions (
    id uuid DEFAULT public.uuid_generate_v4() NOT NULL,
    correlation_id uuid NOT NULL,
    workflow_type character varying(100) NOT NULL,
    current_state character varying(50) DEFAULT 'PENDING'::character varying NOT NULL,
    namespace character varying(255) NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    completed_at timestamp with time zone,
    execution_time_ms bigint,
    error_message text,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT ck_workflow_executions_current_state CHECK ((upper((current_state)::text) = ANY (ARRAY['PENDING'::text, 'PROCESSING'::text, 'COMPLETED'::text, 'FAILED'::text, 'CANCELLED'::text]))),
    CONSTRAINT ck_workflow_executions_execution_time CHECK (((execution_time_ms IS NULL) OR (execution_time_ms >= 0))),
    CONSTRAINT ck_workflow_executions_namespace_not_blank CHECK ((btrim((namespace)::text) <> ''::text))
);

COMMENT ON TABLE public.workflow_executions IS 'Workflow execution lifecycle and state, one row per execution.';

COMMENT ON COLUMN public.workflow_executions.id IS 'Execution id (UUID v4), generated here; the application reads it back with RETURNING id.';

COMMENT ON COLUMN public.workflow_executions.correlation_id IS 'Correlation id shared by every event of the execution; unique, and indexed by its UNIQUE constraint.';

COMMENT ON COLUMN public.workflow_executions.workflow_type IS 'Kind of workflow, e.g. metadata_stamping.';

COMMENT ON COLUMN public.workflow_executions.current_state IS 'Lifecycle state, in either case: PENDING, PROCESSING, COMPLETED, FAILED (the application) or CANCELLED.';

COMMENT ON COLUMN public.workflow_executions.namespace IS 'Tenant/namespace the execution belongs to.';

COMMENT ON COLUMN public.workflow_executions.started_at IS 'When the execution started.';

COMMENT ON COLUMN public.workflow_executions.completed_at IS 'When the execution reached a final state (from the caller''s clock).';

COMMENT ON COLUMN public.workflow_executions.execution_time_ms IS 'Wall time of the execution in milliseconds.';

COMMENT ON COLUMN public.workflow_executions.error_message IS 'Last error, set when the execution failed.';

COMMENT ON COLUMN public.workflow_executions.metadata IS 'Free-form metadata of the execution (a JSON object).';

COMMENT ON COLUMN public.workflow_executions.created_at IS 'When the row was inserted.';

COMMENT ON COLUMN public.workflow_executions.updated_at IS 'When the row was last updated (set by the application).';

CREATE TABLE public.workflow_steps (
    id uuid DEFAULT public.uuid_generate_v4() NOT NULL,
    workflow_id uuid NOT NULL,
    step_name character varying(255) NOT NULL,
    step_order integer NOT NULL,
    status character varying(50) DEFAULT 'PENDING'::character varying NOT NULL,
    execution_time_ms bigint,
    step_data jsonb DEFAULT '{}'::jsonb NOT NULL,
    error_message text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT ck_workflow_steps_execution_time CHECK (((execution_time_ms IS NULL) OR (execution_time_ms >= 0))),
    CONSTRAINT ck_workflow_steps_status CHECK ((upper((status)::text) = ANY (ARRAY['PENDING'::text, 'RUNNING'::text, 'COMPLETED'::text, 'FAILED'::text, 'SKIPPED'::text]))),
    CONSTRAINT ck_workflow_steps_step_order CHECK ((step_order >= 0))
);

COMMENT ON TABLE public.workflow_steps IS 'Step execution history within workflows; deleted with their workflow execution.';

COMMENT ON COLUMN public.workflow_steps.id IS 'Step record id (UUID v4).';

COMMENT ON COLUMN public.workflow_steps.workflow_id IS 'The workflow execution this step belongs to (workflow_executions.id).';

COMMENT ON COLUMN public.workflow_steps.step_name IS 'Name of the step, e.g. generate_blake3_hash.';

COMMENT ON COLUMN public.workflow_steps.step_order IS 'Position of the step in its workflow, from 0.';

COMMENT ON COLUMN public.workflow_steps.status IS 'Step status, in either case: PENDING, RUNNING, COMPLETED, FAILED or SKIPPED.';

COMMENT ON COLUMN public.workflow_steps.execution_time_ms IS 'Wall time of the step in milliseconds.';

COMMENT ON COLUMN public.workflow_steps.step_data IS 'Inputs, outputs and context of the step (a JSON object).';

COMMENT ON COLUMN public.workflow_steps.error_message IS 'Error of a failed step.';

COMMENT ON COLUMN public.workflow_steps.created_at IS 'When the row was inserted.';

ALTER TABLE ONLY public.bridge_states
    ADD CONSTRAINT pk_bridge_states PRIMARY KEY (bridge_id);

ALTER TABLE ONLY public.fsm_transitions
    ADD CONSTRAINT pk_fsm_transitions PRIMARY KEY (id);

ALTER TABLE ONLY public.metadata_stamps
    ADD CONSTRAINT pk_metadata_stamps PRIMARY KEY (id);

ALTER TABLE ONLY public.node_registrations
    ADD CONSTRAINT pk_node_registrations PRIMARY KEY (node_id);

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT pk_workflow_executions PRIMARY KEY (id);

ALTER TABLE ONLY public.workflow_steps
    ADD CONSTRAINT pk_workflow_steps PRIMARY KEY (id);

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT uq_workflow_executions_correlation_id UNIQUE (correlation_id);

CREATE INDEX idx_bridge_states_current_fsm_state ON public.bridge_states USING btree (current_fsm_state);

CREATE INDEX idx_bridge_states_last_aggregation_timestamp ON public.bridge_states USING btree (last_aggregation_timestamp);

CREATE INDEX idx_bridge_states_namespace ON public.bridge_states USING btree (namespace);

CREATE INDEX idx_bridge_states_namespace_current_fsm_state ON public.bridge_states USING btree (namespace, current_fsm_state);

CREATE INDEX idx_fsm_transitions_created_at ON public.fsm_transitions USING btree (created_at);

CREATE INDEX idx_fsm_transitions_entity_id_entity_type ON public.fsm_transitions USING btree (entity_id, entity_type);

CREATE INDEX idx_fsm_transitions_entity_type ON public.fsm_transitions USING btree (entity_type);

CREATE INDEX idx_fsm_transitions_from_state_to_state ON public.fsm_transitions USING btree (from_state, to_state);

CREATE INDEX idx_metadata_stamps_created_at ON public.metadata_stamps USING btree (created_at);

CREATE INDEX idx_metadata_stamps_file_hash ON public.metadata_stamps USING btree (file_hash);

CREATE INDEX idx_metadata_stamps_namespace ON public.metadata_stamps USING btree (namespace);

CREATE INDEX idx_metadata_stamps_namespace_created_at ON public.metadata_stamps USING btree (namespace, created_at);

CREATE INDEX idx_metadata_stamps_workflow_id ON public.metadata_stamps USING btree (workflow_id);

CREATE INDEX idx_node_registrations_health_status ON public.node_registrations USING btree (health_status);

CREATE INDEX idx_node_registrations_last_heartbeat ON public.node_registrations USING btree (last_heartbeat);

CREATE INDEX idx_node_registrations_node_type ON public.node_registrations USING btree (node_type);

CREATE INDEX idx_node_registrations_node_type_health_status ON public.node_registrations USING btree (node_type, health_status);

CREATE INDEX idx_workflow_executions_current_state ON public.workflow_executions USING btree (current_state);

CREATE INDEX idx_workflow_executions_namespace ON public.workflow_executions USING btree (namespace);

CREATE INDEX idx_workflow_executions_started_at ON public.workflow_executions USING btree (started_at);

CREATE INDEX idx_workflow_steps_created_at ON public.workflow_steps USING btree (created_at);

CREATE INDEX idx_workflow_steps_status ON public.workflow_steps USING btree (status);

CREATE INDEX idx_workflow_steps_workflow_id ON public.workflow_steps USING btree (workflow_id);

CREATE INDEX idx_workflow_steps_workflow_id_step_order ON public.workflow_steps USING btree (workflow_id, step_order);

ALTER TABLE ONLY public.metadata_stamps
    ADD CONSTRAINT fk_metadata_stamps_workflow_id FOREIGN KEY (workflow_id) REFERENCES public.workflow_executions(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.workflow_steps
    ADD CONSTRAINT fk_workflow_steps_workflow_id FOREIGN KEY (workflow_id) REFERENCES public.workflow_executions(id) ON DELETE CASCADE;
