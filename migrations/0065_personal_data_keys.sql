-- Erasure on request (GDPR art. 17) by crypto-shredding (application/personal_data.py).
-- A person's personal data (a lead/client's contact name, tax code, e-mail, phone and address, its contact persons,
-- notes about it, call transcripts, names of its contacts on deals) is encrypted inside events with a key of its
-- own subject (the lead/client). The keys live here, each sealed with the server key (application/secrets.py):
-- never in plaintext. Erasure destroys the subject's keys (sealed_key NULL, erased_at set) in the same statement
-- that appends the erasure event; what they encrypted then reads as "[erased]" everywhere, also after a rebuild.
CREATE TABLE personal_data_keys (
    id uuid PRIMARY KEY,
    seq bigserial NOT NULL UNIQUE,  -- creation order: readers fetch the keys that follow a missing one in one query
    organization_id uuid NOT NULL,
    subject_id uuid NOT NULL,
    sealed_key text,
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at timestamptz,
    CHECK ((sealed_key IS NULL) = (erased_at IS NOT NULL))
);
-- One key in use per subject; data written after an erasure gets a new key.
CREATE UNIQUE INDEX personal_data_keys_active ON personal_data_keys (organization_id, subject_id) WHERE erased_at IS NULL;
CREATE INDEX personal_data_keys_subject ON personal_data_keys (organization_id, subject_id);

-- Aggregates whose personal data was erased (the client, the duplicates merged into it, its notes and recordings,
-- deals naming its contacts): events written before encryption existed hold plaintext, which readers of the event
-- store show as "[erased]" for these aggregates.
CREATE TABLE personal_data_erasures (
    organization_id uuid NOT NULL,
    aggregate_id uuid NOT NULL,
    subject_id uuid NOT NULL,
    erased_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, aggregate_id)
);
