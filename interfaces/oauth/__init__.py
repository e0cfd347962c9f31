"""The OAuth 2.1 authorization server in front of /mcp (MCP authorization spec 2025-11-25 / 2026-07-28).

- `routes`: discovery (RFC 8414; RFC 9728 lives in interfaces/http.py), `POST /register` (RFC 7591),
  `GET /authorize` with the login and consent pages, `POST /token`, `POST /revoke` (RFC 7009).
- `store`: PostgreSQL tables of migrations/0004_oauth.sql and 0010_oauth_hardening.sql. Codes and tokens are
  opaque random strings kept as SHA-256 digests, so revocation takes effect on the next request; access tokens
  (`fat_...`) are checked by a verifier registered in `BearerAuth.verifiers`, against their audience (this
  server's `/mcp` URL).
- `cimd`: Client ID Metadata Documents (https `client_id` URLs), fetched safely and cached.
- `pages`: server-rendered HTML, no JavaScript.

Hardening (issue 8):
- Login throttling is a progressive delay, never an account lockout. Every attempt first counts as a failure of
  its account (a digest of the e-mail) and of its client address, each in one atomic upsert (parallel attempts
  are counted one after the other), then waits as the failures before it require, before the password is
  checked: nothing for the first few, then FLUSIA_OAUTH_LOGIN_DELAY doubling up to FLUSIA_OAUTH_LOGIN_MAX_DELAY.
  A correct password takes its failure back and is never refused because of others' failures (at most delayed);
  only an address over FLUSIA_OAUTH_LOGIN_ADDRESS_LIMIT is refused (429, Retry-After).
- Passwords (argon2id) are checked on their own FLUSIA_PASSWORD_HASH_THREADS threads, not the tool-call threads.
- The login form's CSRF token is stateless (HMAC over a nonce cookie and the time, key in `app_secrets` or
  derived from FLUSIA_SECRET): anonymous GET /authorize stores nothing; a session row exists only after a login.
- A bad authorization request or a denial shows an error page, never a redirect: every client registered itself
  (RFC 7591) or is a CIMD URL, so no redirect URI is vetted (RFC 9700 §4.11.2). Only a code is redirected.
- Issuer, resource, audience and challenge URLs come from FLUSIA_PUBLIC_URL (`flusia serve --public-url`) or the
  listening address, X-Forwarded-* only from FLUSIA_TRUSTED_PROXIES: see interfaces/public_url.py.

Settings (environment): FLUSIA_OAUTH_ACCESS_TTL (900 s), FLUSIA_OAUTH_REFRESH_TTL (30 days),
FLUSIA_OAUTH_CODE_TTL (60 s), FLUSIA_OAUTH_SESSION_TTL (12 h), FLUSIA_OAUTH_UNUSED_CLIENT_TTL (7 days: a
dynamic registration never used for a token expires), FLUSIA_OAUTH_REGISTER_LIMIT / _WINDOW (30 per hour per
address), FLUSIA_OAUTH_LOGIN_WINDOW (900 s: a bucket's failures are forgotten after this long without one),
FLUSIA_OAUTH_LOGIN_FREE_ATTEMPTS (3 failures per account before delays), FLUSIA_OAUTH_LOGIN_ADDRESS_FREE_ATTEMPTS
(10 per address), FLUSIA_OAUTH_LOGIN_DELAY (1 s, doubling), FLUSIA_OAUTH_LOGIN_MAX_DELAY (30 s),
FLUSIA_OAUTH_LOGIN_ADDRESS_LIMIT (100 failures per address per window, then 429), FLUSIA_OAUTH_LOGIN_FORM_TTL
(1 h: how long a login form can be submitted), FLUSIA_PASSWORD_HASH_THREADS (2), FLUSIA_CIMD_TIMEOUT (5 s),
FLUSIA_CIMD_MAX_BYTES (64 KiB), FLUSIA_CIMD_CACHE_TTL (1 h; Cache-Control max-age wins, within 1 min..1 day),
FLUSIA_CIMD_ALLOW_LOOPBACK=1 (tests only), FLUSIA_PUBLIC_URL, FLUSIA_TRUSTED_PROXIES (none). The former
FLUSIA_OAUTH_LOGIN_LIMIT (a per-e-mail lockout) is gone.
"""

from interfaces.oauth.routes import oauth_audience, oauth_routes

__all__ = ["oauth_audience", "oauth_routes"]
