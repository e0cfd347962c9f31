"""Invitations: a one-time link, valid 72 hours, with which an invited user sets their password.

The secret (`finv_` + 43 url-safe characters, 256 bits) is only in the link; `user_invites` keeps its SHA-256.
`crm_settings_invite_user` creates the user (status `invited`) and the link, and e-mails it when SMTP is
configured (application/mail.py); the page at `/invite/<secret>` (interfaces/invite.py) sets the password with
`accept`, which uses the link up and makes the user active. A new invitation of the same user replaces the
links before it; deactivating the user revokes them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from application import oauth
from application.mail import SmtpSettings, build_message, send
from domain.errors import DomainError
from domain.settings import INVITE_HOURS
from application.public import public_base

PREFIX = "finv_"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def create(conn: Any, org_id: UUID, user_id: UUID, created_by: UUID | None) -> tuple[str, datetime]:
    """A new link for the user (earlier unused ones are revoked): (secret, expires_at). `digest(secret)` finds it."""
    conn.execute("UPDATE user_invites SET revoked_at = now() WHERE organization_id = %s AND user_id = %s"
                 " AND used_at IS NULL AND revoked_at IS NULL", (org_id, user_id))
    secret = PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO user_invites (token_hash, organization_id, user_id, created_by, expires_at)"
        " VALUES (%s, %s, %s, %s, now() + make_interval(hours => %s)) RETURNING expires_at",
        (digest(secret), org_id, user_id, created_by, INVITE_HOURS)).fetchone()
    return secret, row["expires_at"]


def mailed(conn: Any, secret: str, note: str | None) -> None:
    """Record whether the link was e-mailed: sent (note None) or why not."""
    conn.execute("UPDATE user_invites SET emailed_at = CASE WHEN %s::text IS NULL THEN now() END, email_note = %s"
                 " WHERE token_hash = %s", (note, note, digest(secret)))


def mail_status(conn: Any, token_hash: bytes) -> dict[str, Any] | None:
    return conn.execute("SELECT emailed_at, email_note FROM user_invites WHERE token_hash = %s", (token_hash,)).fetchone()


def revoke_all(conn: Any, org_id: UUID, user_id: UUID) -> int:
    return conn.execute("UPDATE user_invites SET revoked_at = now() WHERE organization_id = %s AND user_id = %s"
                        " AND used_at IS NULL AND revoked_at IS NULL", (org_id, user_id)).rowcount


def link(secret: str) -> str:
    return f"{public_base()}/invite/{secret}"


@dataclass(frozen=True)
class Invite:
    organization_id: UUID
    organization_name: str
    user_id: UUID
    user_name: str
    email: str


def find(conn: Any, secret: str) -> Invite | None:
    """The invitation behind a link, when it is usable: unused, unrevoked, unexpired, its user not deactivated."""
    if not secret.startswith(PREFIX) or len(secret) > 100 or not oauth.storable(secret):
        return None
    row = conn.execute(
        "SELECT i.token_hash, i.organization_id, o.name AS organization_name, i.user_id, u.name AS user_name, u.email"
        " FROM user_invites i JOIN users u ON u.id = i.user_id JOIN organizations o ON o.id = i.organization_id"
        " WHERE i.token_hash = %s AND i.used_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()"
        " AND u.status <> 'inactive'", (digest(secret),)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest(secret)):
        return None
    return Invite(row["organization_id"], row["organization_name"], row["user_id"], row["user_name"], row["email"])


def accept(conn: Any, secret: str, password_hash: str) -> Invite:
    """Use the link up: set the (already hashed) password, make an invited user active, log the change. One
    transaction; a link used or revoked concurrently is refused."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE user_invites SET used_at = now() WHERE token_hash = %s AND used_at IS NULL AND revoked_at IS NULL"
            " AND expires_at > now() RETURNING organization_id, user_id", (digest(secret),)).fetchone()
        if row is None:
            raise DomainError("this invitation link was already used, has expired or was withdrawn", field="token")
        user = conn.execute(
            "UPDATE users SET password_hash = %s, status = CASE WHEN status = 'invited' THEN 'active' ELSE status END,"
            " updated_at = now() WHERE id = %s AND organization_id = %s AND status <> 'inactive'"
            " RETURNING id, name, email, status", (password_hash, row["user_id"], row["organization_id"])).fetchone()
        if user is None:
            raise DomainError("this user was deactivated; ask an admin", field="token")
        conn.execute(
            "INSERT INTO settings_changes (organization_id, actor_user_id, tool, entity_type, entity_id, action, changes)"
            " VALUES (%s, %s, 'invite_page', 'user', %s, 'password_set', %s)",
            (row["organization_id"], row["user_id"], str(row["user_id"]),
             Jsonb({"status": {"before": "invited", "after": user["status"]}, "password": {"before": None, "after": "(set)"}})))
        org = conn.execute("SELECT name FROM organizations WHERE id = %s", (row["organization_id"],)).fetchone()
    return Invite(row["organization_id"], org["name"], user["id"], user["name"], user["email"])


def email(settings: SmtpSettings, *, to: str, user_name: str, organization_name: str, url: str,
          expires_at: datetime, invited_by: str | None) -> None:
    """Send the invitation (MailError when the server refuses or cannot be reached)."""
    by = f"{invited_by} invited you" if invited_by else "You are invited"
    text = (f"Hello {user_name},\n\n{by} to {organization_name} on Flusia CRM.\n\n"
            f"Set your password here (the link works once, until {expires_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC):\n{url}\n\n"
            "Then connect your assistant (Claude, ChatGPT, ...) to the CRM and sign in with this e-mail address.\n")
    send(settings, build_message(sender=settings.sender, to=to, subject=f"Your invitation to {organization_name}",
                                 text=text))
