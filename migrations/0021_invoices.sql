-- Invoices from FattureInCloud (issue 13): the read model of the Invoice aggregates (invoices projection) and the
-- sync queue the background worker drains (application/invoice_sync.py).

-- Read model: one row per issued invoice, amounts in integer cents of the invoice's own currency.
CREATE TABLE invoices (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    source text NOT NULL,                 -- 'fattureincloud'
    company_id bigint NOT NULL,           -- the FattureInCloud company the document belongs to
    external_id bigint NOT NULL,          -- the FattureInCloud document id
    number integer,
    numeration text,
    full_number text,                     -- number and numeration as printed, e.g. '12/A'
    date date,
    currency text NOT NULL,
    client_external_id bigint,
    client_name text,
    client_vat text,
    client_vat_key text,                  -- normalised VAT number (domain.clients.vat_key)
    client_tax_code text,
    subject text,
    net_cents bigint NOT NULL DEFAULT 0,
    vat_cents bigint NOT NULL DEFAULT 0,
    gross_cents bigint NOT NULL DEFAULT 0,
    due_cents bigint NOT NULL DEFAULT 0,  -- what the client pays: the payment instalments (gross less withholdings)
    paid_cents bigint NOT NULL DEFAULT 0,
    allocated_cents bigint NOT NULL DEFAULT 0,
    status text NOT NULL,                 -- unpaid | partially_paid | paid | cancelled
    next_due_date date,
    pdf_url text,
    e_invoice_status text,
    lines jsonb NOT NULL DEFAULT '[]'::jsonb,
    vat_breakdown jsonb NOT NULL DEFAULT '[]'::jsonb,
    cancelled_at timestamptz,
    imported_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    search_tsv tsvector
);
CREATE INDEX invoices_org_date ON invoices (organization_id, date DESC, id DESC);
CREATE INDEX invoices_org_vat ON invoices (organization_id, client_vat_key);
CREATE INDEX invoices_org_unallocated ON invoices (organization_id, date DESC, id DESC)
    WHERE allocated_cents < gross_cents AND status <> 'cancelled';
CREATE INDEX invoices_search ON invoices USING gin (search_tsv);

CREATE TABLE invoice_payments (
    invoice_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    position integer NOT NULL,
    due_date date,
    amount_cents bigint NOT NULL,
    status text NOT NULL,                 -- paid | not_paid | reversed
    paid_date date,
    PRIMARY KEY (invoice_id, position)
);
CREATE INDEX invoice_payments_org_due ON invoice_payments (organization_id, due_date) WHERE status = 'not_paid';

CREATE TABLE invoice_allocations (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    invoice_id uuid NOT NULL,
    deal_id uuid,
    client_id uuid,
    amount_cents bigint NOT NULL,
    note text,
    created_by uuid,
    created_at timestamptz NOT NULL
);
CREATE INDEX invoice_allocations_invoice ON invoice_allocations (invoice_id, created_at, id);
CREATE INDEX invoice_allocations_deal ON invoice_allocations (organization_id, deal_id);
CREATE INDEX invoice_allocations_client ON invoice_allocations (organization_id, client_id);

-- The sync queue: what to fetch, its state (queued | running | done | failed | cancelled), attempts and the next
-- one's time (back-off, 429 Retry-After), where a range sync resumes (next_page), its progress and last error.
-- A running item is held by its worker's session-level advisory lock: when that worker dies, the lock goes with
-- its connection and another worker resumes the item from next_page (pages are imported idempotently).
CREATE TABLE invoice_sync_queue (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kind text NOT NULL,                   -- range | document
    date_from date,
    date_to date,
    document_id bigint,
    state text NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    next_page integer NOT NULL DEFAULT 1,
    progress jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_error text,
    cancel_requested boolean NOT NULL DEFAULT false,
    requested_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoice_sync_queue_due ON invoice_sync_queue (next_attempt_at) WHERE state IN ('queued', 'running');
CREATE INDEX invoice_sync_queue_org ON invoice_sync_queue (organization_id, created_at DESC, id DESC);

-- What the worker last imported for each invoice: a digest of the upstream document, written in the same
-- statement as the invoice's events, so an unchanged document is skipped without loading its aggregate.
CREATE TABLE invoice_sync_state (
    invoice_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    company_id bigint NOT NULL,
    external_id bigint NOT NULL,
    invoice_date date,
    upstream_hash text NOT NULL,
    removed boolean NOT NULL DEFAULT false,
    synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoice_sync_state_org_date ON invoice_sync_state (organization_id, company_id, invoice_date);

-- Invoices a running range sync has seen: at its end, the range's invoices it did not see were removed upstream.
CREATE TABLE invoice_sync_seen (
    queue_item_id uuid NOT NULL,
    invoice_id uuid NOT NULL,
    PRIMARY KEY (queue_item_id, invoice_id)
);
