-- Identity and access: organizations, roles, users, static API tokens (secrets stored only as hashes).
CREATE TABLE organizations (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    currency text NOT NULL DEFAULT 'EUR',
    timezone text NOT NULL DEFAULT 'Europe/Rome',
    locale text NOT NULL DEFAULT 'it-IT',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE roles (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    grants jsonb NOT NULL,           -- {"clients": "rwd", "deals": "r", ...}
    built_in boolean NOT NULL DEFAULT false,
    UNIQUE (organization_id, name)
);

CREATE TABLE users (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email text NOT NULL,
    name text NOT NULL,
    role_id uuid NOT NULL REFERENCES roles(id),
    status text NOT NULL DEFAULT 'active',
    password_hash text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, email)
);
CREATE INDEX users_name_trgm ON users USING gin (lower(name) gin_trgm_ops);

CREATE TABLE api_tokens (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name text NOT NULL DEFAULT '',
    token_hash bytea NOT NULL UNIQUE,   -- sha256 of the whole secret; tokens are 256-bit random, so no salt is needed
    grants jsonb,                        -- NULL: the user's role grants
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
