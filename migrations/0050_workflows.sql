-- Workflows (issue 12): automations reacting to the event stream.

-- Every event a workflow step causes names the run in its cause row (the run caused it, acting for the user who
-- activated the workflow). The trigger consumer reads it to know how deep in a chain of runs an event is.
ALTER TABLE event_causes ADD COLUMN workflow_run_id uuid;
CREATE INDEX event_causes_workflow_run_idx ON event_causes (workflow_run_id) WHERE workflow_run_id IS NOT NULL;

-- A run's id from its workflow and trigger: uuid3(namespace, '<workflow_id>:<trigger_key>'), the same value as
-- domain.workflows.run_id (md5 is built in; SHA-1 for uuid5 would need pgcrypto, which not every server has).
CREATE FUNCTION workflow_run_id(workflow_id uuid, trigger_key text) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT (substr(h, 1, 12) || '3' || substr(h, 14, 3)
            || to_hex((('x' || substr(h, 17, 1))::bit(4)::int & 3) | 8) || substr(h, 18))::uuid
    FROM (SELECT md5(decode('6f1c2d4e8b7a4c1e9a530d2f7e5b9c31', 'hex')
                     || convert_to(workflow_id::text || ':' || trigger_key, 'UTF8')) AS h) s
$$;

-- Read model "workflows" (rebuildable from events): definitions, runs and each run's step log.
CREATE TABLE workflows (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    description text,
    status text NOT NULL DEFAULT 'draft',
    status_reason text,
    trigger jsonb,
    steps jsonb NOT NULL DEFAULT '[]',
    steps_count integer NOT NULL DEFAULT 0,
    activated_by uuid,
    activated_at timestamptz,
    has_secret boolean NOT NULL DEFAULT false,
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    runs_count integer NOT NULL DEFAULT 0,
    last_run_id uuid,
    last_run_status text,
    last_run_at timestamptz
);
CREATE INDEX workflows_org_idx ON workflows (organization_id, created_at DESC, id);

CREATE TABLE workflow_runs (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    workflow_id uuid NOT NULL,
    workflow_name text NOT NULL,
    workflow_version bigint NOT NULL,
    status text NOT NULL,
    trigger_type text NOT NULL,
    trigger_key text NOT NULL,
    trigger_event_type text,
    trigger_notification_id bigint,
    trigger_entity_type text,
    trigger_entity_id uuid,
    triggered_at timestamptz,
    depth integer NOT NULL DEFAULT 1,
    waiting_until timestamptz,
    error text,
    stop_reason text,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL
);
CREATE INDEX workflow_runs_workflow_idx ON workflow_runs (organization_id, workflow_id, started_at DESC, id);

CREATE TABLE workflow_run_steps (
    run_id uuid NOT NULL,
    seq integer NOT NULL,
    organization_id uuid NOT NULL,
    step_id text,
    step_type text,
    status text NOT NULL,              -- sending, done, failed, waiting
    attempt integer,
    result jsonb,
    error text,
    error_code text,
    waiting_until timestamptz,
    at timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- The trigger consumer "workflow_triggers" (NOT rebuildable: its rows record runs that had side effects).
-- Its own view of each workflow's trigger, in stream order, so an event matches the workflows active at that point.
CREATE TABLE workflow_triggers (
    workflow_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    version bigint NOT NULL,
    trigger_type text,
    topic text,
    match_value text,
    config jsonb,
    active boolean NOT NULL DEFAULT false
);
CREATE INDEX workflow_triggers_match_idx ON workflow_triggers (organization_id, topic) WHERE active;

-- Tasks' due dates as the stream says them (for task_due timers, exact at every point of the stream).
CREATE TABLE workflow_task_dues (
    task_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    due_date date,
    open boolean NOT NULL DEFAULT true
);
CREATE INDEX workflow_task_dues_org_idx ON workflow_task_dues (organization_id) WHERE open AND due_date IS NOT NULL;

-- Timers the engine polls: a schedule's next tick, a task coming due. Firing one inserts its pending run.
CREATE TABLE workflow_timers (
    workflow_id uuid NOT NULL,
    timer_key text NOT NULL,
    organization_id uuid NOT NULL,
    kind text NOT NULL,                -- schedule, task_due
    due_at timestamptz NOT NULL,
    task_id uuid,
    PRIMARY KEY (workflow_id, timer_key)
);
CREATE INDEX workflow_timers_due_idx ON workflow_timers (due_at);
CREATE INDEX workflow_timers_task_idx ON workflow_timers (task_id) WHERE task_id IS NOT NULL;

-- One row per (workflow, trigger): the ledger that makes a trigger start at most one run, ever. Inserted by the
-- consumer in its batch transaction (with its tracking position) or by a firing timer; claimed by the engine with
-- FOR UPDATE SKIP LOCKED. status: pending (due_at: when to look at it next, a wait's end), done, skipped (the
-- whole trigger test failed), cut (deeper than the loop limit: never started).
CREATE TABLE workflow_pending (
    run_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    workflow_id uuid NOT NULL,
    workflow_version bigint NOT NULL,
    trigger_key text NOT NULL,
    notification_id bigint,
    depth integer NOT NULL DEFAULT 1,
    status text NOT NULL,
    due_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,   -- claims that ended in an unexpected error (retried with back-off)
    UNIQUE (workflow_id, trigger_key)
);
CREATE INDEX workflow_pending_due_idx ON workflow_pending (due_at, created_at) WHERE status = 'pending';
CREATE INDEX workflow_pending_started_idx ON workflow_pending (started_at, organization_id) WHERE started_at IS NOT NULL;

-- Per-workflow webhook signing secrets, sealed (AES-GCM; key from FLUSIA_SECRET, else a generated one), never in
-- an event, a result or a log.
CREATE TABLE workflow_secrets (
    workflow_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    sealed bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
