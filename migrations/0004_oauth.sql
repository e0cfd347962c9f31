-- OAuth 2.1 authorization server for /mcp: clients, login sessions, codes, tokens, rate limits, CIMD cache.
-- Every secret (client secret, session id, code, access and refresh token) is stored only as its SHA-256:
-- they are 256-bit random values, so a fast hash without salt is enough; comparisons are constant-time.
CREATE TABLE oauth_clients (
    client_id text PRIMARY KEY,
    kind text NOT NULL,                          -- 'dynamic' (RFC 7591) | 'metadata_document' (CIMD)
    client_secret_hash bytea,                    -- NULL for public clients
    token_endpoint_auth_method text NOT NULL,    -- none | client_secret_post | client_secret_basic
    client_name text,
    redirect_uris jsonb NOT NULL,
    grant_types jsonb NOT NULL,
    metadata jsonb NOT NULL,
    registered_from text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    cache_expires_at timestamptz                 -- CIMD: when the fetched document must be fetched again
);

CREATE TABLE oauth_sessions (
    id_hash bytea PRIMARY KEY,
    csrf_token text NOT NULL,
    identities jsonb NOT NULL DEFAULT '[]',       -- [{"organization_id", "user_id"}] after a successful login
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE TABLE oauth_codes (
    code_hash bytea PRIMARY KEY,
    client_id text NOT NULL,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    redirect_uri text NOT NULL,
    code_challenge text NOT NULL,
    resource text NOT NULL,
    scope text NOT NULL,
    family_id uuid NOT NULL,                     -- tokens minted from this code; revoked if the code is replayed
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);

CREATE TABLE oauth_refresh_tokens (
    token_hash bytea PRIMARY KEY,
    family_id uuid NOT NULL,
    client_id text NOT NULL,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    resource text NOT NULL,
    scope text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz,                      -- used once: presenting it again revokes the family
    revoked_at timestamptz
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family_id);

CREATE TABLE oauth_access_tokens (
    token_hash bytea PRIMARY KEY,
    family_id uuid NOT NULL,
    client_id text NOT NULL,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    resource text NOT NULL,                      -- audience: the /mcp URL the token is for
    scope text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX oauth_access_tokens_family ON oauth_access_tokens (family_id);

CREATE TABLE oauth_rate_events (
    bucket text NOT NULL,                        -- e.g. 'register:<ip>', 'login-ip:<ip>', 'login-email:<email>'
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_rate_events_bucket ON oauth_rate_events (bucket, at);
