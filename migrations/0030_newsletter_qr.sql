-- Newsletter (issue 14): read models built by projections/newsletter.py, and the operational tables of sending
-- (deliveries, DKIM private keys, quotas), which are not read models: they are never rebuilt from events.

CREATE TABLE newsletter_lists (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    description text,
    subscribed_count integer NOT NULL DEFAULT 0,
    unsubscribed_count integer NOT NULL DEFAULT 0,
    bounced_count integer NOT NULL DEFAULT 0,
    complained_count integer NOT NULL DEFAULT 0,
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX newsletter_lists_org ON newsletter_lists (organization_id, created_at DESC, id DESC);

CREATE TABLE newsletter_subscribers (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    list_id uuid NOT NULL,
    email text NOT NULL,
    first_name text,
    last_name text,
    client_id uuid,
    contact_id uuid,
    status text NOT NULL,
    consent_source text NOT NULL,
    consent_at timestamptz NOT NULL,
    status_changed_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (list_id, email)
);
CREATE INDEX newsletter_subscribers_list ON newsletter_subscribers (organization_id, list_id, created_at, id);

CREATE TABLE newsletter_campaigns (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    subject text NOT NULL,
    from_name text NOT NULL,
    from_email text NOT NULL,
    reply_to text,
    html_body text,
    text_body text,
    list_ids uuid[] NOT NULL DEFAULT '{}',
    links text[] NOT NULL DEFAULT '{}',
    status text NOT NULL,
    scheduled_at timestamptz,
    started_at timestamptz,
    sent_at timestamptz,
    cancelled_at timestamptz,
    recipients_count integer NOT NULL DEFAULT 0,
    tests_sent integer NOT NULL DEFAULT 0,
    opens integer NOT NULL DEFAULT 0,
    unique_opens integer NOT NULL DEFAULT 0,
    clicks integer NOT NULL DEFAULT 0,
    unique_clicks integer NOT NULL DEFAULT 0,
    unsubscribes integer NOT NULL DEFAULT 0,
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX newsletter_campaigns_org ON newsletter_campaigns (organization_id, created_at DESC, id DESC);
CREATE INDEX newsletter_campaigns_due ON newsletter_campaigns (scheduled_at) WHERE status = 'scheduled';

-- One row per (campaign, recipient, kind): unique opens and clicks; `hits` counts them all.
CREATE TABLE newsletter_engagements (
    organization_id uuid NOT NULL,
    campaign_id uuid NOT NULL,
    delivery_id uuid NOT NULL,
    kind text NOT NULL,
    hits integer NOT NULL DEFAULT 1,
    first_at timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, delivery_id, kind)
);

CREATE TABLE newsletter_blacklist (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    value text NOT NULL,
    kind text NOT NULL,
    reason text,
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX newsletter_blacklist_org ON newsletter_blacklist (organization_id, value);

CREATE TABLE newsletter_domains (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    domain text NOT NULL,
    selector text NOT NULL,
    public_key text NOT NULL,
    spf_ok boolean NOT NULL DEFAULT false,
    dkim_ok boolean NOT NULL DEFAULT false,
    dmarc_ok boolean NOT NULL DEFAULT false,
    verified boolean NOT NULL DEFAULT false,
    problems jsonb NOT NULL DEFAULT '[]',
    checked_at timestamptz,
    verified_at timestamptz,
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX newsletter_domains_org ON newsletter_domains (organization_id, domain);

-- Operational: DKIM private keys, AES-GCM encrypted (application/newsletter_sending.py), written and deleted in
-- the same statement as the domain's events.
CREATE TABLE newsletter_domain_keys (
    domain_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    private_key bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Operational: one row per recipient of a campaign (or test address), recorded before the message is sent
-- (queued -> sending -> sent | failed, or cancelled), so a restart sends nobody twice and skips nobody.
CREATE TABLE campaign_deliveries (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    campaign_id uuid NOT NULL,
    list_id uuid,
    kind text NOT NULL DEFAULT 'campaign',
    email text NOT NULL,
    first_name text,
    last_name text,
    client_name text,
    status text NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    message_id text,
    error text,
    bounced boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaign_deliveries_queue ON campaign_deliveries (next_attempt_at) WHERE status = 'queued';
CREATE INDEX campaign_deliveries_campaign ON campaign_deliveries (campaign_id, status);
CREATE INDEX campaign_deliveries_month ON campaign_deliveries (organization_id, created_at);

-- Operational: an organization's own monthly sending quota (default FLUSIA_NEWSLETTER_MONTHLY_QUOTA).
CREATE TABLE newsletter_quotas (
    organization_id uuid PRIMARY KEY,
    monthly_quota integer NOT NULL CHECK (monthly_quota >= 0)
);

-- QR codes (projections/qr_codes.py).
CREATE TABLE qr_codes (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    code text NOT NULL UNIQUE,
    target_url text NOT NULL,
    label text,
    client_id uuid,
    deal_id uuid,
    campaign_id uuid,
    active boolean NOT NULL DEFAULT true,
    scans_count integer NOT NULL DEFAULT 0,
    last_scan_at timestamptz,
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX qr_codes_org ON qr_codes (organization_id, created_at DESC, id DESC);

CREATE TABLE qr_scans (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    qr_code_id uuid NOT NULL,
    scanned_at timestamptz NOT NULL,
    device text NOT NULL,
    country text,
    visitor text
);
CREATE INDEX qr_scans_code ON qr_scans (qr_code_id, scanned_at DESC, id DESC);
