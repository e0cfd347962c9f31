-- Login throttling by progressive delay (interfaces/oauth): one counter row per bucket, an account (a digest of
-- its e-mail) or a client address. An attempt increments its bucket's row in one upsert, which locks the row, so
-- parallel attempts are counted one after the other; failures are forgotten after a quiet window.
CREATE TABLE oauth_login_throttle (
    bucket text PRIMARY KEY,                     -- 'acct:<sha256 of e-mail>' | 'addr:<ip or IPv6 /64>'
    failures integer NOT NULL,
    last_failure_at timestamptz NOT NULL
);
CREATE INDEX oauth_login_throttle_last_failure ON oauth_login_throttle (last_failure_at);

-- The former per-e-mail and per-address login counters (events in oauth_rate_events) are no longer read.
DELETE FROM oauth_rate_events WHERE bucket LIKE 'login-%';

-- Login sessions are now created only by a successful login; anonymous rows from before are dropped.
DELETE FROM oauth_sessions WHERE identities = '[]'::jsonb;
