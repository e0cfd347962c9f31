-- Stream consumers isolate failures per organization (projections now, workflows later).
-- Each event records its organization, so a consumer can set one organization's events aside and replay
-- exactly those later. Filled by every append from the cause row; older events get it from event_causes.
ALTER TABLE stored_events ADD COLUMN organization_id uuid;
UPDATE stored_events e SET organization_id = c.organization_id
FROM event_causes c
WHERE e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id;
CREATE INDEX stored_events_org_idx ON stored_events (organization_id, notification_id);

-- An event a consumer could not handle. One row per consumer and organization: the organization's later
-- events wait behind it (its read model stays consistent), other organizations go on. Retried with back-off;
-- `flusia projections retry` retries at once. No error message is kept: it could carry a tenant's values.
CREATE TABLE consumer_parked (
    consumer text NOT NULL,
    organization_id uuid NOT NULL,          -- all zeros for an event without an organization
    notification_id bigint NOT NULL,        -- the first event that failed
    originator_id uuid,
    topic text,
    error_class text NOT NULL,
    error_code text,                        -- SQLSTATE when the database refused it
    attempts integer NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (consumer, organization_id)
);
