"""The OAuth 2.1 authorization server in front of /mcp (MCP authorization spec 2025-11-25 / 2026-07-28).

- `routes`: discovery (RFC 8414; RFC 9728 lives in interfaces/http.py), `POST /register` (RFC 7591),
  `GET /authorize` with the login and consent pages, `POST /token`, `POST /revoke` (RFC 7009).
- `store`: PostgreSQL tables of migrations/0004_oauth.sql. Codes and tokens are opaque random strings kept as
  SHA-256 digests, so revocation takes effect on the next request; access tokens (`fat_...`) are checked by a
  verifier registered in `BearerAuth.verifiers`, against their audience (this server's `/mcp` URL).
- `cimd`: Client ID Metadata Documents (https `client_id` URLs), fetched safely and cached.
- `pages`: server-rendered HTML, no JavaScript.

Settings (environment): FLUSIA_OAUTH_ACCESS_TTL (900 s), FLUSIA_OAUTH_REFRESH_TTL (30 days),
FLUSIA_OAUTH_CODE_TTL (60 s), FLUSIA_OAUTH_SESSION_TTL (12 h), FLUSIA_OAUTH_UNUSED_CLIENT_TTL (7 days: a
dynamic registration never used for a token expires), FLUSIA_OAUTH_REGISTER_LIMIT / _WINDOW (30 per hour per
address), FLUSIA_OAUTH_LOGIN_LIMIT / _WINDOW (10 failures per 15 min per e-mail, 30 per address),
FLUSIA_CIMD_TIMEOUT (5 s), FLUSIA_CIMD_MAX_BYTES (64 KiB), FLUSIA_CIMD_CACHE_TTL (1 h; Cache-Control max-age
wins, within 1 min..1 day), FLUSIA_CIMD_ALLOW_LOOPBACK=1 (tests only). Behind a proxy set FLUSIA_PUBLIC_URL:
the issuer and the token audience are derived from it.
"""

from interfaces.oauth.routes import oauth_audience, oauth_routes

__all__ = ["oauth_audience", "oauth_routes"]
