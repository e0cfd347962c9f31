-- Sales core read models: pipelines, deals (extending 0003's table), services catalog, activities, timeline.
-- Every row carries organization_id; every query filters on it. Amounts are integer cents.

CREATE TABLE pipelines (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    is_default boolean NOT NULL DEFAULT false,
    deleted boolean NOT NULL DEFAULT false,   -- kept so stats of closed deals still name their pipeline
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX pipelines_org ON pipelines (organization_id, created_at, id);

CREATE TABLE pipeline_stages (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    pipeline_id uuid NOT NULL,
    name text NOT NULL,
    position integer NOT NULL,
    probability integer NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX pipeline_stages_pipeline ON pipeline_stages (pipeline_id, position);

ALTER TABLE deals
    ADD COLUMN description text,
    ADD COLUMN lost_reason text,
    ADD COLUMN expected_close_date date,
    ADD COLUMN explicit_value boolean NOT NULL DEFAULT false,
    ADD COLUMN created_by uuid,
    ADD COLUMN stage_entered_at timestamptz,
    ADD COLUMN search_text text NOT NULL DEFAULT '';
CREATE INDEX deals_org_created ON deals (organization_id, created_at DESC, id DESC);
CREATE INDEX deals_org_status_close ON deals (organization_id, status, close_date) INCLUDE (value_cents, pipeline_id, owner_id);
CREATE INDEX deals_org_value ON deals (organization_id, value_cents DESC, id DESC);
CREATE INDEX deals_board ON deals (organization_id, pipeline_id, status, stage_id, value_cents DESC, id);
CREATE INDEX deals_org_owner ON deals (organization_id, owner_id);
CREATE INDEX deals_search_trgm ON deals USING gin (search_text gin_trgm_ops);

CREATE TABLE deal_services (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    deal_id uuid NOT NULL,
    service_id uuid NOT NULL,
    name text NOT NULL,
    code text,
    unit text,
    vat_rate numeric NOT NULL DEFAULT 0,
    quantity numeric NOT NULL,
    unit_price_cents bigint NOT NULL,
    discount_percent numeric NOT NULL DEFAULT 0,
    total_cents bigint NOT NULL,
    position integer NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX deal_services_deal ON deal_services (deal_id, position);
CREATE INDEX deal_services_service ON deal_services (organization_id, service_id);

CREATE TABLE deal_contacts (
    organization_id uuid NOT NULL,
    deal_id uuid NOT NULL,
    contact_id uuid NOT NULL,
    name text,
    role text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (deal_id, contact_id)
);

CREATE TABLE deal_commissions (
    organization_id uuid NOT NULL,
    deal_id uuid NOT NULL,
    user_id uuid NOT NULL,
    percent numeric,
    amount_cents bigint,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (deal_id, user_id)
);

-- One row per stay of a deal in a stage (left_at NULL while it is still there): stage conversion, time in stage.
CREATE TABLE deal_stage_history (
    organization_id uuid NOT NULL,
    deal_id uuid NOT NULL,
    pipeline_id uuid NOT NULL,
    stage_id uuid NOT NULL,
    entered_at timestamptz NOT NULL,
    left_at timestamptz
);
CREATE INDEX deal_stage_history_pipeline ON deal_stage_history (organization_id, pipeline_id, stage_id);
CREATE INDEX deal_stage_history_deal ON deal_stage_history (deal_id, left_at);

CREATE TABLE service_categories (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    description text,
    created_at timestamptz NOT NULL
);
CREATE INDEX service_categories_org ON service_categories (organization_id, lower(name), id);

CREATE TABLE services (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    code text,
    description text,
    unit_price_cents bigint NOT NULL,
    vat_rate numeric NOT NULL DEFAULT 0,
    unit text,
    category_id uuid,
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX services_org_name ON services (organization_id, lower(name), id);
CREATE INDEX services_org_category ON services (organization_id, category_id);

CREATE TABLE activities (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    type text NOT NULL,
    client_id uuid,
    deal_id uuid,
    user_id uuid,
    occurred_at timestamptz NOT NULL,
    subject text,
    body text,
    details jsonb NOT NULL DEFAULT '{}',
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX activities_org_occurred ON activities (organization_id, occurred_at DESC, id DESC);
CREATE INDEX activities_org_client ON activities (organization_id, client_id, occurred_at DESC);
CREATE INDEX activities_org_deal ON activities (organization_id, deal_id, occurred_at DESC);
CREATE INDEX activities_org_user ON activities (organization_id, user_id, occurred_at);

-- The merged timeline of clients and deals, written by the timeline projection from events.
CREATE TABLE timeline_entries (
    id uuid PRIMARY KEY,               -- the event id for status/stage entries, the activity/note id otherwise
    organization_id uuid NOT NULL,
    client_id uuid,
    deal_id uuid,
    kind text NOT NULL,                -- activity | note | deal_created | deal_status | deal_stage
    ref_id uuid NOT NULL,              -- activity, note or deal id
    activity_type text,
    occurred_at timestamptz NOT NULL,
    user_id uuid,
    title text NOT NULL,
    body text,
    data jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX timeline_client ON timeline_entries (organization_id, client_id, occurred_at DESC, id DESC);
CREATE INDEX timeline_deal ON timeline_entries (organization_id, deal_id, occurred_at DESC, id DESC);
CREATE INDEX timeline_ref ON timeline_entries (ref_id);

CREATE TABLE timeline_deals (
    deal_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    client_id uuid,
    title text NOT NULL
);
