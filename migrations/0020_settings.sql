-- Organization settings (issue 13): the organization profile, invitations, connections to outside systems with
-- encrypted secrets, the log of settings changes, templates and custom fields.

-- The organization profile (name, currency, timezone and locale exist since 0002).
ALTER TABLE organizations
    ADD COLUMN vat_number text,
    ADD COLUMN address jsonb,
    ADD COLUMN logo_url text,
    ADD COLUMN updated_at timestamptz;

ALTER TABLE roles
    ADD COLUMN description text,
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN updated_at timestamptz;
CREATE UNIQUE INDEX roles_org_lower_name ON roles (organization_id, lower(name));

ALTER TABLE users ADD COLUMN updated_at timestamptz;
CREATE INDEX users_org_role ON users (organization_id, role_id);

-- One-time set-password links of invited users: the secret is in the link only; here its SHA-256 (a 256-bit random
-- value needs no salt). Valid until expires_at (72 h), once (used_at), and only while the user is not inactive.
CREATE TABLE user_invites (
    token_hash bytea PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    revoked_at timestamptz,
    emailed_at timestamptz,               -- when the link was e-mailed (FLUSIA_SMTP_URL), after the invitation committed
    email_note text                       -- why it was not e-mailed (our words, never the mail server's reply)
);
CREATE INDEX user_invites_user ON user_invites (organization_id, user_id);

-- Connections to outside systems, one row per organization and provider ('fattureincloud'; later 'whatsapp').
-- `settings` holds what may be shown (e.g. {"company_id": 12345}); `secret` the credential, AES-256-GCM encrypted
-- with the server's key and bound to organization and provider (application/secrets.py). Never returned by a tool.
CREATE TABLE organization_connections (
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    provider text NOT NULL,
    settings jsonb NOT NULL DEFAULT '{}'::jsonb,
    secret text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    PRIMARY KEY (organization_id, provider)
);

-- Every change to the organization's auth and settings tables (profile, connections, users, invitations, roles,
-- API tokens), written in the same transaction as the change itself. Read by operators and by the audit tools
-- (crm_audit_recent_changes) beside the event store's event_causes, which say the same for event-sourced
-- settings (templates, custom fields) and all CRM data.
--   actor_*         who did it: the user, and the API token or OAuth client the call came with
--   correlation_id  the call (the same id as event_causes for a call that also appended events)
--   tool            the tool (or 'cli', 'invite_page') that made the change
--   entity_type     organization | connection | user | invite | role | api_token
--   action          created | updated | invited | deactivated | reactivated | deleted | revoked | connected |
--                   disconnected | password_set
--   changes         field -> {"before": value, "after": value}; secrets never appear (a changed secret is
--                   recorded as {"before": "(set)" | null, "after": "(set)" | null}), nor token hashes
CREATE TABLE settings_changes (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor_user_id uuid,
    actor_token_id uuid,
    actor_oauth_client_id text,
    correlation_id uuid,
    tool text NOT NULL,
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    action text NOT NULL,
    changes jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX settings_changes_org ON settings_changes (organization_id, occurred_at DESC, id DESC);
CREATE INDEX settings_changes_entity ON settings_changes (organization_id, entity_type, entity_id, id DESC);

-- Templates read model (settings projection): e-mail, WhatsApp, quote and task checklist templates.
CREATE TABLE templates (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    entity text NOT NULL,
    description text,
    subject text,
    html_body text,
    text_body text,
    language text,
    category text,
    body text,
    parameters jsonb NOT NULL DEFAULT '[]'::jsonb,
    items jsonb NOT NULL DEFAULT '[]'::jsonb,
    placeholders text[] NOT NULL DEFAULT '{}',
    created_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX templates_org ON templates (organization_id, kind, lower(name), id);

-- Custom field definitions read model (settings projection). A deleted field's row goes; its values stay in the
-- entities' events and leave the entities' read models (custom_fields columns below).
CREATE TABLE custom_field_definitions (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    entity_type text NOT NULL,
    key text NOT NULL,
    label text NOT NULL,
    field_type text NOT NULL,
    required boolean NOT NULL DEFAULT false,
    choices jsonb NOT NULL DEFAULT '[]'::jsonb,
    description text,
    position integer NOT NULL DEFAULT 0,
    created_by uuid,
    created_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX custom_field_definitions_key ON custom_field_definitions (organization_id, entity_type, key);

-- Custom field values on the entities' read models: {"key": value}; text-like values also feed search.
ALTER TABLE clients ADD COLUMN custom_fields jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE deals ADD COLUMN custom_fields jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE tasks ADD COLUMN custom_fields jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE projects ADD COLUMN custom_fields jsonb NOT NULL DEFAULT '{}'::jsonb;
CREATE INDEX clients_custom_fields ON clients USING gin (custom_fields jsonb_path_ops);
CREATE INDEX deals_custom_fields ON deals USING gin (custom_fields jsonb_path_ops);
CREATE INDEX tasks_custom_fields ON tasks USING gin (custom_fields jsonb_path_ops);
CREATE INDEX projects_custom_fields ON projects USING gin (custom_fields jsonb_path_ops);

-- The searchable text of custom field values: every string, and every string inside a list (choices).
CREATE FUNCTION f_custom_text(vals jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT string_agg(t, ' ') FROM (
        SELECT v #>> '{}' AS t FROM jsonb_each(coalesce(vals, '{}'::jsonb)) AS e(k, v) WHERE jsonb_typeof(v) = 'string'
        UNION ALL
        SELECT x #>> '{}' FROM jsonb_each(coalesce(vals, '{}'::jsonb)) AS e(k, v),
            jsonb_array_elements(CASE WHEN jsonb_typeof(v) = 'array' THEN v ELSE '[]'::jsonb END) AS x
        WHERE jsonb_typeof(x) = 'string'
    ) s
$$;
