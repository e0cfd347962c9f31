-- WhatsApp (issue 15): read models built by projections/whatsapp.py (chats, messages, the access list), and the
-- operational tables of the Cloud API integration, which are not read models and are never rebuilt from events:
-- whatsapp_inbox (webhook deliveries, stored in the request and applied in order by the worker) and
-- whatsapp_outbox (each send recorded before the Cloud API is called, completed after).

CREATE TABLE whatsapp_chats (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    phone_number_id text NOT NULL,          -- the business number (Cloud API id)
    display_number text,                    -- the business number as WhatsApp shows it
    wa_id text NOT NULL,                    -- the customer's number: E.164 digits
    contact_name text,                      -- the customer's WhatsApp profile name
    client_id uuid,
    client_link text,                       -- automatic | manual
    assignee_id uuid,
    archived boolean NOT NULL DEFAULT false,
    archived_at timestamptz,
    unread_count integer NOT NULL DEFAULT 0,
    messages_count integer NOT NULL DEFAULT 0,
    last_message_id uuid,
    last_message_at timestamptz,
    last_message_preview text,
    last_message_direction text,
    last_inbound_at timestamptz,            -- opens the 24-hour customer-care window
    last_inbound_wamid text,                -- what a read receipt names
    last_read_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    search_tsv tsvector
);
CREATE INDEX whatsapp_chats_recent ON whatsapp_chats (organization_id, (coalesce(last_message_at, created_at)) DESC, id DESC);
CREATE INDEX whatsapp_chats_created ON whatsapp_chats (organization_id, created_at DESC, id DESC);
CREATE INDEX whatsapp_chats_assignee ON whatsapp_chats (organization_id, assignee_id);
CREATE INDEX whatsapp_chats_client ON whatsapp_chats (organization_id, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX whatsapp_chats_number ON whatsapp_chats (organization_id, phone_number_id);
CREATE INDEX whatsapp_chats_search ON whatsapp_chats USING gin (search_tsv);

CREATE TABLE whatsapp_messages (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    chat_id uuid NOT NULL,
    seq bigint NOT NULL,                    -- the position of the event that recorded it: the chat's order
    direction text NOT NULL,                -- in | out
    kind text NOT NULL,
    body text,                              -- text, caption, location name, reaction emoji, template as sent
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    wamid text,                             -- the Cloud API's message id
    status text NOT NULL,
    at timestamptz NOT NULL,                -- WhatsApp's time for inbound messages, the recording time for outbound
    sent_by uuid,
    accepted_at timestamptz,
    sent_at timestamptz,
    delivered_at timestamptz,
    read_at timestamptz,
    failed_at timestamptz,
    interrupted boolean NOT NULL DEFAULT false,
    error jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    search_tsv tsvector
);
CREATE INDEX whatsapp_messages_chat ON whatsapp_messages (chat_id, seq DESC);
CREATE INDEX whatsapp_messages_search ON whatsapp_messages USING gin (search_tsv);
CREATE INDEX whatsapp_messages_wamid ON whatsapp_messages (organization_id, wamid) WHERE wamid IS NOT NULL;

CREATE TABLE whatsapp_acl (
    organization_id uuid NOT NULL,
    user_id uuid NOT NULL,
    chat_id uuid,
    phone_number_id text,
    granted_by uuid,
    granted_at timestamptz NOT NULL,
    CHECK ((chat_id IS NULL) <> (phone_number_id IS NULL))
);
CREATE UNIQUE INDEX whatsapp_acl_unique ON whatsapp_acl (organization_id, user_id, coalesce(chat_id::text, ''),
                                                          coalesce(phone_number_id, ''));
CREATE INDEX whatsapp_acl_chat ON whatsapp_acl (organization_id, chat_id) WHERE chat_id IS NOT NULL;
CREATE INDEX whatsapp_acl_number ON whatsapp_acl (organization_id, phone_number_id) WHERE phone_number_id IS NOT NULL;

-- Webhook deliveries: one row per message or status, deduplicated by WhatsApp's ids, inserted in the webhook's
-- request (under an advisory lock, so ids commit in order) and applied in id order by the worker.
CREATE TABLE whatsapp_inbox (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL,
    dedup_key text NOT NULL,
    kind text NOT NULL,                     -- message | status
    phone_number_id text NOT NULL,
    business_account_id text,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    outcome text,                           -- applied | duplicate | unknown_message | ignored
    UNIQUE (organization_id, dedup_key)
);
CREATE INDEX whatsapp_inbox_pending ON whatsapp_inbox (id) WHERE processed_at IS NULL;

-- Sends: recorded (state 'sending') in the same statement as the message's first event, before the Cloud API is
-- called; then accepted (with the Cloud API's id), failed, retry (a rate limit: may be sent again), interrupted.
CREATE TABLE whatsapp_outbox (
    message_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    chat_id uuid NOT NULL,
    state text NOT NULL,
    wamid text,
    error_code integer,
    error_text text,
    attempts integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX whatsapp_outbox_sending ON whatsapp_outbox (updated_at) WHERE state = 'sending';
CREATE INDEX whatsapp_outbox_wamid ON whatsapp_outbox (organization_id, wamid) WHERE wamid IS NOT NULL;

-- Matching a WhatsApp number to a client's contact person (digits of the phone, without a leading 00).
CREATE INDEX client_contacts_phone_digits ON client_contacts
    (organization_id, regexp_replace(regexp_replace(phone, '^\s*00', ''), '\D', '', 'g')) WHERE phone IS NOT NULL;
