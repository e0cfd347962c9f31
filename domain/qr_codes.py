"""QR codes: a tracked short link `<public url>/q/<code>` to an http(s) target, optionally linked to a client, deal
or campaign, that can be deactivated (the link then answers 410) and activated again. Each scan is an event of
its own (`Scan`): when, a coarse device class, the country when a proxy header tells it, and a visitor key
that changes every day; never the address it came from."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event

from domain.base import TenantAggregate, apply_changes
from domain.errors import Conflict, DomainError
from domain.shared import Editable

QR_FIELDS = ("target_url", "label", "client_id", "deal_id", "campaign_id")
DEVICES = ("mobile", "tablet", "desktop", "bot", "other")
CODE_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
_CODE = re.compile(rf"^[{CODE_ALPHABET}]{{{CODE_LENGTH}}}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def check_target(url: str, *, field: str = "target_url") -> str:
    """Targets are absolute http(s) URLs with a host: no javascript:, data:, file: or relative links."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise DomainError("target_url is not a valid URL", field=field) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise DomainError("target_url must be an http:// or https:// URL (no other schemes)", field=field)
    if not parts.hostname or any(c.isspace() for c in url):
        raise DomainError("target_url must be an absolute URL with a host, without spaces", field=field)
    return url


def valid_code(code: str) -> bool:
    return bool(_CODE.match(code))


def device_class(user_agent: str | None) -> str:
    """mobile, tablet, desktop, bot or other, from the User-Agent header alone."""
    ua = (user_agent or "").lower()
    if not ua:
        return "other"
    if any(w in ua for w in ("bot", "crawler", "spider", "curl/", "wget/", "python-", "httpx", "preview")):
        return "bot"
    if "ipad" in ua or "tablet" in ua or ("android" in ua and "mobile" not in ua):
        return "tablet"
    if any(w in ua for w in ("iphone", "mobile", "android", "windows phone")):
        return "mobile"
    if any(w in ua for w in ("windows", "macintosh", "x11", "linux", "cros")):
        return "desktop"
    return "other"


def country_code(header: str | None) -> str | None:
    """A two-letter country code from a proxy header (CF-IPCountry), or None ('XX', 'T1' and junk are unknown)."""
    value = (header or "").strip().upper()
    return value if _COUNTRY.match(value) and value not in ("XX", "T1") else None


class AlreadyInState(Conflict):
    code = "already_in_state"


class QrCode(Editable):
    entity_name = "QR code"
    editable_fields = frozenset(QR_FIELDS)

    @event("Created")
    def __init__(self, org_id: UUID, code: str, fields: dict[str, Any], created_by: UUID | None) -> None:
        self.org_id = org_id
        self.code = code
        self.target_url = ""
        self.label = self.client_id = self.deal_id = self.campaign_id = None
        apply_changes(self, fields, self.editable_fields)
        self.created_by = created_by
        self.active = True
        self.deleted = False

    @classmethod
    def generate(cls, org_id: UUID, code: str, fields: dict[str, Any], created_by: UUID | None) -> QrCode:
        if not valid_code(code):
            raise DomainError("not a QR code", field="code")
        fields = {**fields, "target_url": check_target(fields.get("target_url") or "")}
        return cls(org_id=org_id, code=code, fields=fields, created_by=created_by)

    def check_changes(self, changes: dict[str, Any]) -> None:
        if "target_url" in changes:
            changes["target_url"] = check_target(changes["target_url"] or "")

    def deactivate(self) -> None:
        if not self.active:
            raise AlreadyInState("the QR code is already inactive", field="qr_code_id")
        self._deactivated()

    @event("Deactivated")
    def _deactivated(self) -> None:
        self.active = False

    def activate(self) -> None:
        if self.active:
            raise AlreadyInState("the QR code is already active", field="qr_code_id")
        self._activated()

    @event("Activated")
    def _activated(self) -> None:
        self.active = True


class Scan(TenantAggregate):
    """One scan of a QR code."""

    entity_name = "scan"

    @event("Recorded")
    def __init__(self, org_id: UUID, qr_code_id: UUID, device: str, country: str | None, visitor: str | None) -> None:
        if device not in DEVICES:
            raise DomainError(f"device must be one of {', '.join(DEVICES)}", field="device")
        self.org_id = org_id
        self.qr_code_id = qr_code_id
        self.device = device
        self.country = country
        self.visitor = visitor
        self.deleted = False
