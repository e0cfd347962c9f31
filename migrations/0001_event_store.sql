-- Event store used by the eventsourcing library's PostgreSQL recorder (its CREATE_TABLE is off outside tests).
-- The column set, composite type and index names are the ones eventsourcing 9.5 expects.
CREATE TABLE stored_events (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version)
) WITH (
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE UNIQUE INDEX stored_events_notification_id_idx ON stored_events (notification_id ASC);
CREATE TYPE stored_event_uuid AS (originator_id uuid, originator_version bigint, topic text, state bytea);

-- Who caused each event. Written in the same transaction as the events (one row per recorded command),
-- so audit can always answer "which user, token or OAuth client, under which correlation id".
CREATE TABLE event_causes (
    first_notification_id bigint PRIMARY KEY,
    last_notification_id bigint NOT NULL,
    organization_id uuid NOT NULL,
    user_id uuid,
    token_id uuid,
    oauth_client_id text,
    correlation_id uuid NOT NULL,
    tool text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_causes_org_idx ON event_causes (organization_id, first_notification_id DESC);

-- A write tool's idempotency key: inserted in the events' transaction, so a retried call appends nothing.
CREATE TABLE idempotency_keys (
    organization_id uuid NOT NULL,
    key text NOT NULL,
    tool text NOT NULL,
    request_hash text NOT NULL,
    result jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, key)
);
