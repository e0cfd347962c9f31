"""Organizations, roles, users and static API tokens (the auth tables).

Secrets are never stored: a token is `flusia_` + 43 url-safe random characters (256 bits), kept as its
SHA-256 (enough for a random secret of that size; no salt needed) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from psycopg.types.json import Jsonb

from application import permissions
from application.principal import Principal
from domain.errors import DomainError, NotFound

TOKEN_PREFIX = "flusia_"


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class CreatedOrganization:
    organization_id: UUID
    user_id: UUID
    token: str
    token_id: UUID


def create_organization(conn: Any, name: str, admin_email: str, admin_name: str | None = None) -> CreatedOrganization:
    org_id = uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (org_id, name))
        for role_name, grants in permissions.BUILT_IN_ROLES.items():
            conn.execute(
                "INSERT INTO roles (id, organization_id, name, grants, built_in) VALUES (%s, %s, %s, %s, true)",
                (uuid4(), org_id, role_name, Jsonb(grants)),
            )
        user_id = create_user(conn, org_id, admin_email, admin_name or admin_email.split("@")[0], "admin")
        token, token_id = create_token(conn, org_id, user_id, None, name="initial admin token")
    return CreatedOrganization(org_id, user_id, token, token_id)


def create_user(conn: Any, org_id: UUID, email: str, name: str, role: str) -> UUID:
    role_row = conn.execute("SELECT id FROM roles WHERE organization_id = %s AND name = %s", (org_id, role)).fetchone()
    if role_row is None:
        raise DomainError(f"role {role!r} does not exist in this organization", field="role")
    user_id = uuid4()
    exists = conn.execute(
        "SELECT 1 FROM users WHERE organization_id = %s AND lower(email) = lower(%s)", (org_id, email)
    ).fetchone()
    if exists:
        raise DomainError(f"a user with e-mail {email} already exists", field="email")
    conn.execute(
        "INSERT INTO users (id, organization_id, email, name, role_id) VALUES (%s, %s, %s, %s, %s)",
        (user_id, org_id, email.strip().lower(), name, role_row["id"]),
    )
    return user_id


def create_token(conn: Any, org_id: UUID, user_id: UUID, grants: dict[str, str] | None, name: str = "") -> tuple[str, UUID]:
    owner = conn.execute("SELECT 1 FROM users WHERE id = %s AND organization_id = %s", (user_id, org_id)).fetchone()
    if owner is None:
        raise NotFound("user", user_id, field="user")
    secret = new_token_secret()
    token_id = uuid4()
    conn.execute(
        "INSERT INTO api_tokens (id, organization_id, user_id, name, token_hash, grants) VALUES (%s, %s, %s, %s, %s, %s)",
        (token_id, org_id, user_id, name, token_hash(secret), Jsonb(grants) if grants is not None else None),
    )
    return secret, token_id


def principal_for_token(conn: Any, secret: str) -> Principal | None:
    """The principal a static API token acts for, or None when unknown, revoked, or its user is inactive."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest = token_hash(secret)
    row = conn.execute(
        "SELECT t.id, t.organization_id, t.user_id, t.grants AS token_grants, t.token_hash, r.grants AS role_grants"
        " FROM api_tokens t JOIN users u ON u.id = t.user_id JOIN roles r ON r.id = u.role_id"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL AND u.status = 'active'",
        (digest,),
    ).fetchone()
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest):
        return None
    return Principal(
        organization_id=row["organization_id"],
        user_id=row["user_id"],
        token_id=row["id"],
        grants=permissions.intersect(row["role_grants"], row["token_grants"]),
    )


def ensure_user(conn: Any, org_id: UUID, user_id: UUID, *, field: str) -> None:
    """Assignments must point at an active user of the same organization."""
    row = conn.execute(
        "SELECT status FROM users WHERE id = %s AND organization_id = %s", (user_id, org_id)
    ).fetchone()
    if row is None:
        raise NotFound("user", user_id, field=field)
    if row["status"] != "active":
        raise DomainError(f"user {user_id} is {row['status']} and cannot be assigned", field=field)


def organization_count(conn: Any) -> int:
    return conn.execute("SELECT count(*) AS n FROM organizations").fetchone()["n"]


def list_tokens(conn: Any, org_id: UUID) -> list[dict[str, Any]]:
    """The organization's API tokens for operators: who owns each, what it grants, whether it is revoked.
    Never the secret nor its hash. `grants` None: the token carries its user's role grants."""
    return conn.execute(
        "SELECT t.id, t.name, json_build_object('id', u.id, 'name', u.name, 'email', u.email) AS user,"
        " t.grants, t.created_at, t.revoked_at, t.last_used_at AS last_used"
        " FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.organization_id = %s ORDER BY t.created_at, t.id",
        (org_id,),
    ).fetchall()


def revoke_token(conn: Any, org_id: UUID, token_id: UUID) -> dict[str, Any]:
    """Revoke one API token at once (the next request with it is refused); revoking it again changes nothing."""
    row = conn.execute(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE organization_id = %s AND id = %s"
        " RETURNING id, revoked_at", (org_id, token_id),
    ).fetchone()
    if row is None:
        raise NotFound("token", token_id, field="token_id")
    return row


def deactivate_user(conn: Any, org_id: UUID, user_id: UUID) -> dict[str, Any]:
    """Mark the user inactive and revoke, in one transaction, every credential acting for them: API tokens and
    OAuth access and refresh tokens. Returns how many of each were still live."""
    with conn.transaction():
        user = conn.execute("UPDATE users SET status = 'inactive' WHERE organization_id = %s AND id = %s RETURNING id",
                            (org_id, user_id)).fetchone()
        if user is None:
            raise NotFound("user", user_id, field="user")
        revoked = {
            table: conn.execute(
                f"UPDATE {table} SET revoked_at = now()"  # noqa: S608 - table names are constants
                " WHERE organization_id = %s AND user_id = %s AND revoked_at IS NULL", (org_id, user_id),
            ).rowcount
            for table in ("api_tokens", "oauth_access_tokens", "oauth_refresh_tokens")
        }
    return {"user_id": user_id, "status": "inactive", "revoked": revoked}
