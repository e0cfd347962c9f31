"""Stored attachment content and its expiring signed download links.

Inline content is kept in PostgreSQL (`attachment_blobs`, keyed by organization and SHA-256, counting its
references); it is written and released in the same statement as the events that attach and remove it, so a
refused command leaves no content and a removed attachment or deleted task leaves none behind. A download
link is `/attachments/<id>?expires=<unix>&sig=<HMAC-SHA256(secret, "<id>.<expires>")>`: whoever holds it
may download that one file until it expires. The secret is FLUSIA_SECRET, else one generated once and
kept in the database so every worker signs alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from application.store import SideWrite
from projections import tasks as tasks_q

LINK_TTL_SECONDS = 15 * 60
MAX_INLINE_BYTES = 2 * 1024 * 1024
MAX_INLINE_BASE64 = (MAX_INLINE_BYTES + 2) // 3 * 4
SECRET_NAME = "download_links"


def link_secret(conn: Any) -> bytes:
    configured = os.environ.get("FLUSIA_SECRET")
    if configured:
        return configured.encode()
    conn.execute("INSERT INTO app_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                 (SECRET_NAME, secrets.token_urlsafe(32)))
    row = conn.execute("SELECT value FROM app_secrets WHERE name = %s", (SECRET_NAME,)).fetchone()
    value = row["value"] if isinstance(row, dict) else row[0]
    return value.encode()


def signature(secret: bytes, attachment_id: UUID | str, expires: int) -> str:
    mac = hmac.new(secret, f"{attachment_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def download_link(secret: bytes, attachment_id: UUID, *, now: float | None = None,
                  ttl: int = LINK_TTL_SECONDS) -> tuple[str, int]:
    """The link (absolute when FLUSIA_PUBLIC_URL is set) and its expiry as a unix timestamp."""
    expires = int((time.time() if now is None else now) + ttl)
    base = os.environ.get("FLUSIA_PUBLIC_URL", "").rstrip("/")
    return f"{base}/attachments/{attachment_id}?expires={expires}&sig={signature(secret, attachment_id, expires)}", expires


def check_link(secret: bytes, attachment_id: UUID | str, expires: str | int | None, sig: str | None,
               *, now: float | None = None) -> str | None:
    """None when the link is good; else why not ('invalid' or 'expired')."""
    try:
        expires_at = int(expires)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "invalid"
    if not sig or not hmac.compare_digest(signature(secret, attachment_id, expires_at), sig):
        return "invalid"
    if expires_at < (time.time() if now is None else now):
        return "expired"
    return None


def keep_content(org_id: UUID, content: bytes) -> tuple[str, SideWrite]:
    """The content's SHA-256 and the write that stores it (once per organization and digest, one more
    reference), to commit with the event that attaches it."""
    digest = hashlib.sha256(content).hexdigest()
    return digest, SideWrite(
        "INSERT INTO attachment_blobs (organization_id, sha256, content, refs) VALUES (%s, %s, %s, 1)"
        " ON CONFLICT (organization_id, sha256) DO UPDATE SET refs = attachment_blobs.refs + 1",
        (org_id, digest, content))


def release_content(org_id: UUID, digests: list[str]) -> list[SideWrite]:
    """Writes dropping one reference per digest (to commit with the events that remove the attachments): the
    content goes when nothing references it. Each row is touched by exactly one of the two statements."""
    counts = Counter(digests)
    if not counts:
        return []
    rows = [json.dumps({"sha256": d, "n": n}) for d, n in counts.items()]
    released = "SELECT r.sha256, r.n FROM jsonb_to_recordset(%s::jsonb) AS r(sha256 text, n integer)"
    payload = "[" + ",".join(rows) + "]"
    return [
        SideWrite(f"DELETE FROM attachment_blobs b USING ({released}) r WHERE b.organization_id = %s"
                  " AND b.sha256 = r.sha256 AND b.refs <= r.n", (payload, org_id)),
        SideWrite(f"UPDATE attachment_blobs b SET refs = b.refs - r.n FROM ({released}) r WHERE b.organization_id = %s"
                  " AND b.sha256 = r.sha256 AND b.refs > r.n", (payload, org_id)),
    ]


def load_blob(conn: Any, org_id: UUID, digest: str) -> bytes | None:
    row = conn.execute("SELECT content FROM attachment_blobs WHERE organization_id = %s AND sha256 = %s",
                       (org_id, digest)).fetchone()
    if row is None:
        return None
    return bytes(row["content"] if isinstance(row, dict) else row[0])


@dataclass(frozen=True)
class Download:
    """What a signed link gives: the file's name, type and bytes, or why not (`problem`: expired, invalid, gone)."""

    problem: str | None = None
    name: str = ""
    mime_type: str | None = None
    content: bytes = b""


def open_download(conn: Any, attachment_id: UUID, expires: str | None, sig: str | None) -> Download:
    """The content behind a download link, checked: the signature is the only credential."""
    problem = check_link(link_secret(conn), attachment_id, expires, sig)
    if problem is not None:
        return Download(problem)
    row = tasks_q.get_attachment(conn, None, attachment_id)
    content = load_blob(conn, row["organization_id"], row["sha256"]) if row and row["sha256"] else None
    if content is None:
        return Download("gone")
    return Download(None, row["name"], row["mime_type"], content)
