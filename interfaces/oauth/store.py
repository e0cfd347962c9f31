"""PostgreSQL persistence of the authorization server. Synchronous: called through anyio's thread pool.

Secrets (client secrets, session ids, codes, tokens) are kept only as SHA-256 digests.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID, uuid4

from psycopg.types.json import Jsonb

from application import oauth, permissions
from application.principal import Principal


class OAuthStore:
    def __init__(self, pool: Any, settings: oauth.Settings) -> None:
        self.pool = pool
        self.settings = settings

    # --- rate limits ---------------------------------------------------------------------------------

    def hit(self, bucket: str, limit: int, window: int, *, record: bool = True) -> bool:
        """True when `bucket` is still under `limit` events in the last `window` seconds (records one).

        Check and record run under a transaction-level advisory lock on the bucket, so parallel requests are
        counted one after the other (none sees a count that another is about to raise)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("oauth_rate:" + bucket,))
            conn.execute("DELETE FROM oauth_rate_events WHERE bucket = %s AND at < now() - make_interval(secs => %s)",
                         (bucket, max(window, 86400)))
            n = conn.execute(
                "SELECT count(*) AS n FROM oauth_rate_events WHERE bucket = %s AND at > now() - make_interval(secs => %s)",
                (bucket, window),
            ).fetchone()["n"]
            if n >= limit:
                return False
            if record:
                conn.execute("INSERT INTO oauth_rate_events (bucket) VALUES (%s)", (bucket,))
            return True

    # --- login throttling ----------------------------------------------------------------------------

    def login_attempt(self, bucket: str) -> int:
        """Count one login attempt as a failure of `bucket` and return how many failures it had before.

        One statement: the upsert locks the bucket's row, so N parallel attempts get N different answers.
        A bucket's failures are forgotten once `login_window` seconds pass without one. A successful
        attempt takes its failure back (`login_succeeded`)."""
        self._purge_throttle()
        with self.pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO oauth_login_throttle AS t (bucket, failures, last_failure_at) VALUES (%(b)s, 1, now())"
                " ON CONFLICT (bucket) DO UPDATE SET"
                "  failures = CASE WHEN t.last_failure_at < now() - make_interval(secs => %(w)s) THEN 1"
                "                  ELSE t.failures + 1 END,"
                "  last_failure_at = now()"
                " RETURNING failures",
                {"b": bucket, "w": self.settings.login_window},
            ).fetchone()
        return row["failures"] - 1

    def login_succeeded(self, buckets: list[str]) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE oauth_login_throttle SET failures = greatest(failures - 1, 0) WHERE bucket = ANY(%s)",
                         (buckets,))

    _purged_at = 0.0

    def _purge_throttle(self) -> None:
        """Forget buckets whose window has passed (at most once a minute per process)."""
        now = time.monotonic()
        if now - self._purged_at < 60:
            return
        self._purged_at = now
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM oauth_login_throttle WHERE last_failure_at < now() - make_interval(secs => %s)",
                         (self.settings.login_window,))

    # --- clients -------------------------------------------------------------------------------------

    def expire_unused_clients(self, conn: Any) -> None:
        conn.execute(
            "DELETE FROM oauth_clients WHERE kind = 'dynamic' AND last_used_at IS NULL"
            " AND created_at < now() - make_interval(secs => %s)",
            (self.settings.unused_client_ttl,),
        )

    def register_client(self, metadata: dict[str, Any], auth_method: str, address: str) -> tuple[str, str | None]:
        client_id = oauth.new_secret(oauth.CLIENT_PREFIX)
        secret = oauth.new_secret(oauth.SECRET_PREFIX) if auth_method != "none" else None
        with self.pool.connection() as conn:
            self.expire_unused_clients(conn)
            conn.execute(
                "INSERT INTO oauth_clients (client_id, kind, client_secret_hash, token_endpoint_auth_method, client_name,"
                " redirect_uris, grant_types, metadata, registered_from) VALUES (%s, 'dynamic', %s, %s, %s, %s, %s, %s, %s)",
                (client_id, oauth.digest(secret) if secret else None, auth_method, metadata.get("client_name"),
                 Jsonb(metadata["redirect_uris"]), Jsonb(metadata["grant_types"]), Jsonb(metadata), address),
            )
        return client_id, secret

    def client(self, client_id: str) -> dict[str, Any] | None:
        """A registered client that has not expired; CIMD clients only while their cache is fresh."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT * FROM oauth_clients WHERE client_id = %s AND ("
                "  (kind = 'dynamic' AND (last_used_at IS NOT NULL OR created_at >= now() - make_interval(secs => %s)))"
                "  OR (kind = 'metadata_document' AND cache_expires_at > now()))",
                (client_id, self.settings.unused_client_ttl),
            ).fetchone()
        return row

    def cache_metadata_document(self, client_id: str, document: dict[str, Any], ttl: int) -> dict[str, Any]:
        with self.pool.connection() as conn:
            return conn.execute(
                "INSERT INTO oauth_clients (client_id, kind, token_endpoint_auth_method, client_name, redirect_uris,"
                " grant_types, metadata, cache_expires_at)"
                " VALUES (%s, 'metadata_document', 'none', %s, %s, %s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (client_id) DO UPDATE SET client_name = EXCLUDED.client_name,"
                "  redirect_uris = EXCLUDED.redirect_uris, grant_types = EXCLUDED.grant_types,"
                "  metadata = EXCLUDED.metadata, cache_expires_at = EXCLUDED.cache_expires_at"
                " WHERE oauth_clients.kind = 'metadata_document' RETURNING *",
                (client_id, document.get("client_name"), Jsonb(document["redirect_uris"]),
                 Jsonb(document.get("grant_types") or ["authorization_code", "refresh_token"]), Jsonb(document), ttl),
            ).fetchone()

    def touch_client(self, conn: Any, client_id: str) -> None:
        conn.execute("UPDATE oauth_clients SET last_used_at = now() WHERE client_id = %s", (client_id,))

    # --- login sessions ------------------------------------------------------------------------------

    def new_session(self, identities: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """A signed-in browser's session: created only by a successful login (the login form needs none)."""
        sid = oauth.new_secret("")
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM oauth_sessions WHERE expires_at < now()")
            row = conn.execute(
                "INSERT INTO oauth_sessions (id_hash, csrf_token, identities, expires_at)"
                " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING *",
                (oauth.digest(sid), oauth.new_secret(""), Jsonb(identities), self.settings.session_ttl),
            ).fetchone()
        return sid, row

    def session(self, sid: str | None) -> dict[str, Any] | None:
        if not sid or len(sid) > 200:
            return None
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT * FROM oauth_sessions WHERE id_hash = %s AND expires_at > now()", (oauth.digest(sid),)
            ).fetchone()

    def drop_session(self, sid: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM oauth_sessions WHERE id_hash = %s", (oauth.digest(sid),))

    def active_identities(self, identities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The session's identities whose users are still active, with organization names."""
        if not identities:
            return []
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT u.id AS user_id, u.organization_id, o.name AS organization_name, u.name, u.email"
                " FROM users u JOIN organizations o ON o.id = u.organization_id"
                " WHERE u.status = 'active' AND u.id = ANY(%s) ORDER BY o.name, o.id",
                ([UUID(i["user_id"]) for i in identities],),
            ).fetchall()
        allowed = {(i["organization_id"], i["user_id"]) for i in identities}
        return [r for r in rows if (str(r["organization_id"]), str(r["user_id"])) in allowed]

    # --- codes ---------------------------------------------------------------------------------------

    def issue_code(self, *, client_id: str, org_id: UUID, user_id: UUID, redirect_uri: str, challenge: str,
                   resource: str, scope: str) -> str:
        code = oauth.new_secret(oauth.CODE_PREFIX)
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day'")
            conn.execute(
                "INSERT INTO oauth_codes (code_hash, client_id, organization_id, user_id, redirect_uri, code_challenge,"
                " resource, scope, family_id, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                (oauth.digest(code), client_id, org_id, user_id, redirect_uri, challenge, resource, scope, uuid4(),
                 self.settings.code_ttl),
            )
        return code

    def redeem_code(self, code: str) -> tuple[dict[str, Any] | None, str]:
        """Mark the code used and return it; (None, reason) when unknown, replayed or expired.

        A replayed code revokes every token minted from it (RFC 9700 §4.2.4)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "UPDATE oauth_codes SET used_at = now() WHERE code_hash = %s AND used_at IS NULL"
                " RETURNING *, expires_at < now() AS expired",
                (oauth.digest(code),),
            ).fetchone()
            if row is None:
                replay = conn.execute("SELECT family_id FROM oauth_codes WHERE code_hash = %s", (oauth.digest(code),)).fetchone()
                if replay is not None:
                    self._revoke_family(conn, replay["family_id"])
                    return None, "the authorization code was already used"
                return None, "the authorization code is unknown"
            if row["expired"] or not oauth.same_digest(row["code_hash"], code):
                return None, "the authorization code has expired"
            return row, ""

    # --- tokens --------------------------------------------------------------------------------------

    def issue_tokens(self, *, family_id: UUID, client_id: str, org_id: UUID, user_id: UUID, resource: str,
                     scope: str, with_refresh: bool = True) -> dict[str, Any]:
        access = oauth.new_secret(oauth.ACCESS_PREFIX)
        refresh = oauth.new_secret(oauth.REFRESH_PREFIX) if with_refresh else None
        s = self.settings
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO oauth_access_tokens (token_hash, family_id, client_id, organization_id, user_id, resource,"
                " scope, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                (oauth.digest(access), family_id, client_id, org_id, user_id, resource, scope, s.access_ttl),
            )
            if refresh is not None:
                conn.execute(
                    "INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, organization_id, user_id,"
                    " resource, scope, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                    (oauth.digest(refresh), family_id, client_id, org_id, user_id, resource, scope, s.refresh_ttl),
                )
            self.touch_client(conn, client_id)
        out = {"access_token": access, "token_type": "Bearer", "expires_in": s.access_ttl, "scope": scope}
        if refresh is not None:
            out["refresh_token"] = refresh
        return out

    def rotate_refresh(self, token: str) -> tuple[dict[str, Any] | None, str]:
        """Use a refresh token once. Presenting a rotated-out or revoked one revokes its whole family."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "UPDATE oauth_refresh_tokens SET rotated_at = now()"
                " WHERE token_hash = %s AND rotated_at IS NULL AND revoked_at IS NULL"
                " RETURNING *, expires_at < now() AS expired",
                (oauth.digest(token),),
            ).fetchone()
            if row is None:
                old = conn.execute(
                    "SELECT family_id FROM oauth_refresh_tokens WHERE token_hash = %s", (oauth.digest(token),)
                ).fetchone()
                if old is not None:
                    self._revoke_family(conn, old["family_id"])
                    return None, "the refresh token was already used or revoked; its grant is revoked"
                return None, "the refresh token is unknown"
            if row["expired"] or not oauth.same_digest(row["token_hash"], token):
                return None, "the refresh token has expired"
            return row, ""

    def _revoke_family(self, conn: Any, family_id: UUID) -> None:
        conn.execute("UPDATE oauth_refresh_tokens SET revoked_at = now() WHERE family_id = %s AND revoked_at IS NULL", (family_id,))
        conn.execute("UPDATE oauth_access_tokens SET revoked_at = now() WHERE family_id = %s AND revoked_at IS NULL", (family_id,))

    def revoke(self, token: str, client_id: str | None) -> None:
        """RFC 7009: revoke an access token (just it) or a refresh token (its whole grant). Unknown: no-op."""
        h = oauth.digest(token)
        with self.pool.connection() as conn:
            for table in ("oauth_refresh_tokens", "oauth_access_tokens"):
                row = conn.execute(f"SELECT family_id, client_id FROM {table} WHERE token_hash = %s", (h,)).fetchone()
                if row is None:
                    continue
                if client_id is not None and row["client_id"] != client_id:
                    return  # another client's token: ignored (RFC 7009 §2.1)
                if table == "oauth_refresh_tokens":
                    self._revoke_family(conn, row["family_id"])
                else:
                    conn.execute("UPDATE oauth_access_tokens SET revoked_at = now() WHERE token_hash = %s", (h,))
                return

    def user_active(self, org_id: UUID, user_id: UUID) -> bool:
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT 1 FROM users WHERE id = %s AND organization_id = %s AND status = 'active'", (user_id, org_id)
            ).fetchone() is not None

    def principal_for_access_token(self, token: str, audience: str | None) -> Principal | None:
        """The verifier BearerAuth calls: valid, unrevoked, unexpired, for this resource, user still active.
        Grants are the user's role grants (scope mcp:full = everything the role allows)."""
        if not token.startswith(oauth.ACCESS_PREFIX) or len(token) > 200 or audience is None:
            return None
        h = oauth.digest(token)
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT t.token_hash, t.organization_id, t.user_id, t.client_id, t.resource, r.grants AS role_grants"
                " FROM oauth_access_tokens t JOIN users u ON u.id = t.user_id AND u.organization_id = t.organization_id"
                " JOIN roles r ON r.id = u.role_id"
                " WHERE t.token_hash = %s AND t.revoked_at IS NULL AND t.expires_at > now() AND u.status = 'active'",
                (h,),
            ).fetchone()
        if row is None or not oauth.same_digest(row["token_hash"], token) or row["resource"] != audience:
            return None
        return Principal(
            organization_id=row["organization_id"], user_id=row["user_id"],
            grants=permissions.intersect(row["role_grants"], None), oauth_client_id=row["client_id"],
        )
