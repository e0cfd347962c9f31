-- Read models built by the projector. Every row carries organization_id; every query filters on it.
CREATE TABLE projection_tracking (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE clients (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    kind text NOT NULL,
    status text,
    business_name text NOT NULL,
    contact_name text,
    vat_number text,
    tax_code text,
    email text,
    phone text,
    website text,
    address jsonb,
    source text,
    assigned_to uuid,
    tags text[] NOT NULL DEFAULT '{}',
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    converted_at timestamptz,
    vat_key text,     -- normalised for duplicate detection
    email_key text,
    phone_key text,
    search_text text NOT NULL DEFAULT '',
    search_tsv tsvector
);
CREATE INDEX clients_org_created ON clients (organization_id, created_at DESC, id DESC);
CREATE INDEX clients_org_name ON clients (organization_id, lower(business_name), id);
CREATE INDEX clients_org_assigned ON clients (organization_id, assigned_to);
CREATE INDEX clients_tags ON clients USING gin (tags);
CREATE INDEX clients_search_trgm ON clients USING gin (search_text gin_trgm_ops);
CREATE INDEX clients_search_tsv ON clients USING gin (search_tsv);
CREATE INDEX clients_vat_key ON clients (organization_id, vat_key) WHERE vat_key IS NOT NULL;
CREATE INDEX clients_email_key ON clients (organization_id, email_key) WHERE email_key IS NOT NULL;
CREATE INDEX clients_phone_key ON clients (organization_id, phone_key) WHERE phone_key IS NOT NULL;

CREATE TABLE client_contacts (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    client_id uuid NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    name text NOT NULL,
    role text,
    email text,
    phone text,
    created_at timestamptz NOT NULL
);
CREATE INDEX client_contacts_client ON client_contacts (client_id, created_at);

CREATE TABLE notes (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    subject_type text NOT NULL,
    subject_id uuid NOT NULL,
    body text NOT NULL,
    author_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX notes_subject ON notes (organization_id, subject_type, subject_id, created_at DESC, id DESC);

CREATE TABLE recordings (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    client_id uuid NOT NULL,
    title text,
    media_url text NOT NULL,
    duration_seconds integer NOT NULL,
    transcript text,
    direction text,
    recorded_at timestamptz,
    created_by uuid,
    created_at timestamptz NOT NULL
);
CREATE INDEX recordings_client ON recordings (organization_id, client_id, created_at DESC, id DESC);

CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    title text NOT NULL,
    description text,
    status text NOT NULL,
    priority text NOT NULL,
    due_date date,
    client_id uuid,
    deal_id uuid,
    project_id uuid,
    assignee_id uuid,
    tags text[] NOT NULL DEFAULT '{}',
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX tasks_org_due ON tasks (organization_id, due_date, id);
CREATE INDEX tasks_org_created ON tasks (organization_id, created_at DESC, id DESC);
CREATE INDEX tasks_org_assignee ON tasks (organization_id, assignee_id, status, due_date);
CREATE INDEX tasks_org_client ON tasks (organization_id, client_id);

-- Deals read model (filled by the deals projection); clients list their deals from here.
CREATE TABLE deals (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    client_id uuid,
    title text NOT NULL,
    status text NOT NULL,
    pipeline_id uuid,
    stage_id uuid,
    value_cents bigint NOT NULL DEFAULT 0,
    currency text NOT NULL DEFAULT 'EUR',
    owner_id uuid,
    close_date date,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX deals_org_client ON deals (organization_id, client_id, created_at DESC, id DESC);

-- Projects read model (filled by the projects projection); tasks link to projects through it.
CREATE TABLE projects (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    client_id uuid,
    status text NOT NULL DEFAULT 'active',
    archived boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX projects_org ON projects (organization_id, created_at DESC, id DESC);
