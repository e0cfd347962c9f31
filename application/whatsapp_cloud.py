"""The WhatsApp Cloud API: the organization's connection (set with crm_settings_update_organization, secrets
encrypted at rest) and a small client for the calls the CRM makes.

Connection (`organization_connections`, provider `whatsapp`): `phone_number_id` (the business number's id),
optionally `business_account_id` (the WhatsApp Business Account, for the approved template list; when not set, the
id WhatsApp names in signed webhook deliveries is used), and three secrets kept as one AES-256-GCM value bound to the
organization (application/secrets.py): `access_token` (Bearer for the Graph API), `app_secret` (the Meta app's
secret: webhook deliveries are signed with it, `X-Hub-Signature-256`) and `webhook_verify_token` (the GET
handshake). Secrets are never returned, logged or written to `settings_changes` (only "(set)").

Calls (Graph API, base `FLUSIA_WHATSAPP_URL`, default https://graph.facebook.com/v23.0; `FLUSIA_WHATSAPP_TIMEOUT`
seconds, default 15): POST /{phone_number_id}/messages (text, template, read receipts), GET
/{business_account_id}/message_templates, GET /{media_id} then the media URL it answers. Errors become `CloudError`
with WhatsApp's code: a rate limit (HTTP 429, codes 4, 80007, 130429, 131056) or a server error is retryable;
131047 (more than 24 hours since the customer's last message) points to a template; a lost answer after the request
went out is `OutcomeUnknown` (the message may have been sent: never sent again).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta, Struct
from psycopg.types.json import Jsonb

from application import secrets as sealed
from application.logsafe import describe
from application.public import public_base
from domain.errors import DomainError

log = logging.getLogger("flusia.whatsapp")
PROVIDER = "whatsapp"
DEFAULT_URL = "https://graph.facebook.com/v23.0"
RATE_LIMIT_CODES = {4, 80007, 130429, 131056}
TEMPORARY_CODES = {1, 2, 131000, 131016}
REENGAGEMENT = 131047
TOKEN_CODES = {0, 190}
SECRET_FIELDS = ("access_token", "app_secret", "webhook_verify_token")
MAX_MEDIA_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class CloudSettings:
    base_url: str = DEFAULT_URL
    timeout: float = 15.0

    @classmethod
    def from_env(cls) -> CloudSettings:
        try:
            timeout = max(1.0, float(os.environ.get("FLUSIA_WHATSAPP_TIMEOUT") or 15))
        except ValueError:
            timeout = 15.0
        return cls(base_url=(os.environ.get("FLUSIA_WHATSAPP_URL") or DEFAULT_URL).rstrip("/"), timeout=timeout)


@dataclass(frozen=True)
class Connection:
    phone_number_id: str
    business_account_id: str | None
    access_token: str
    app_secret: str
    verify_token: str


class NotConnected(DomainError):
    code = "not_connected"


# -- the connection ---------------------------------------------------------------------------------------------
def _row(conn: Any, org_id: UUID) -> dict[str, Any] | None:
    return conn.execute("SELECT settings, secret, updated_at FROM organization_connections WHERE organization_id = %s"
                        " AND provider = %s", (org_id, PROVIDER)).fetchone()


def _secrets(conn: Any, org_id: UUID, stored: str | None) -> dict[str, str]:
    if not stored:
        return {}
    text = sealed.decrypt(sealed.server_key(conn), stored, context=sealed.context_for(org_id, PROVIDER))
    return json.loads(text)


def load(conn: Any, org_id: UUID) -> Connection | None:
    """The organization's connection with its secrets, or None when WhatsApp is not connected. A stored secret this
    server cannot decrypt is reported as such (set it again)."""
    row = _row(conn, org_id)
    if row is None:
        return None
    try:
        values = _secrets(conn, org_id, row["secret"])
    except (sealed.SecretUnavailable, ValueError):
        raise NotConnected("the stored WhatsApp secrets cannot be decrypted with this server's key (FLUSIA_SECRET_KEY "
                           "or $FLUSIA_HOME/secret.key changed); an admin sets them again with "
                           "crm_settings_update_organization (whatsapp)") from None
    settings = row["settings"] or {}
    if not settings.get("phone_number_id") or not all(values.get(k) for k in SECRET_FIELDS):
        return None
    return Connection(settings["phone_number_id"], settings.get("business_account_id") or settings.get("learned_account_id"),
                      values["access_token"], values["app_secret"], values["webhook_verify_token"])


def require(conn: Any, org_id: UUID) -> Connection:
    found = load(conn, org_id)
    if found is None:
        raise NotConnected("WhatsApp is not connected: an admin sets whatsapp (phone_number_id, access_token, "
                           "app_secret, webhook_verify_token) with crm_settings_update_organization")
    return found


def remember_account(conn: Any, org_id: UUID, business_account_id: str) -> None:
    """The WhatsApp Business Account id a signed webhook delivery named, for the template list when the admin did
    not set business_account_id."""
    conn.execute("UPDATE organization_connections SET settings = settings || jsonb_build_object('learned_account_id', %s::text)"
                 " WHERE organization_id = %s AND provider = %s AND settings->>'learned_account_id' IS DISTINCT FROM %s",
                 (business_account_id, org_id, PROVIDER, business_account_id))


NumberId = Annotated[str, Meta(pattern=r"^[0-9]{5,40}$")]
Secret = Annotated[str, Meta(min_length=8, max_length=4000, pattern=r"^\S+$")]


class WhatsappArg(Struct, kw_only=True, forbid_unknown_fields=True):
    phone_number_id: Annotated[NumberId, Meta(description="The business number's id (Meta: WhatsApp > API setup).")]
    business_account_id: Annotated[NumberId, Meta(description=(
        "The WhatsApp Business Account id, for the approved template list (else learned from webhooks)."))] | None = None
    access_token: Annotated[Secret, Meta(description="A token with whatsapp_business_messaging (and _management for "
                                                     "templates); stored encrypted, never shown. Omit to keep.")] | None = None
    app_secret: Annotated[Secret, Meta(description="The Meta app's secret, which signs webhook deliveries; encrypted, "
                                                   "never shown. Omit to keep.")] | None = None
    webhook_verify_token: Annotated[Secret, Meta(description="The verify token you give Meta for the webhook; "
                                                            "encrypted, never shown. Omit to keep.")] | None = None


class WhatsappConnectionOut(Struct, kw_only=True, omit_defaults=True):
    configured: bool
    phone_number_id: str | None = None
    business_account_id: str | None = None
    webhook_url: Annotated[str | None, Meta(description="Give Meta this callback URL (and your verify token).")] = None
    updated_at: datetime | None = None


def webhook_url(org_id: UUID) -> str:
    return f"{public_base()}/webhooks/whatsapp/{org_id}"


def present(conn: Any, org_id: UUID) -> WhatsappConnectionOut:
    row = _row(conn, org_id)
    if row is None:
        return WhatsappConnectionOut(configured=False)
    settings = row["settings"] or {}
    return WhatsappConnectionOut(configured=bool(row["secret"]), phone_number_id=settings.get("phone_number_id"),
                                 business_account_id=settings.get("business_account_id"),
                                 webhook_url=webhook_url(org_id), updated_at=row["updated_at"])


def connect(tx: Any, arg: WhatsappArg | None) -> None:
    """crm_settings_update_organization(whatsapp=...) inside its admin transaction: connect, change or (None)
    disconnect; the change is logged in settings_changes without the secrets."""
    current = tx.conn.execute(
        "SELECT settings, secret FROM organization_connections WHERE organization_id = %s AND provider = %s FOR UPDATE",
        (tx.org_id, PROVIDER)).fetchone()
    before = dict(current["settings"]) if current else {}
    if arg is None:
        if current is not None:
            tx.conn.execute("DELETE FROM organization_connections WHERE organization_id = %s AND provider = %s",
                            (tx.org_id, PROVIDER))
            tx.record("connection", PROVIDER, "disconnected", {
                "phone_number_id": {"before": before.get("phone_number_id"), "after": None},
                **{k: {"before": "(set)", "after": None} for k in SECRET_FIELDS}})
        return
    try:
        stored = _secrets(tx.conn, tx.org_id, current["secret"]) if current else {}
    except (sealed.SecretUnavailable, ValueError):
        stored = {}
    given = {k: getattr(arg, k) for k in SECRET_FIELDS if getattr(arg, k) is not None}
    merged = {**stored, **given}
    for k in SECRET_FIELDS:
        if not merged.get(k):
            raise DomainError(f"give whatsapp.{k} the first time WhatsApp is connected", field=f"whatsapp.{k}")
    secret = sealed.encrypt(sealed.server_key(tx.conn), json.dumps(merged),
                            context=sealed.context_for(tx.org_id, PROVIDER))
    settings = {"phone_number_id": arg.phone_number_id}
    if arg.business_account_id:
        settings["business_account_id"] = arg.business_account_id
    if before.get("learned_account_id") and before.get("phone_number_id") == arg.phone_number_id:
        settings["learned_account_id"] = before["learned_account_id"]
    tx.conn.execute(
        "INSERT INTO organization_connections (organization_id, provider, settings, secret, updated_at, updated_by)"
        " VALUES (%s, %s, %s, %s, now(), %s) ON CONFLICT (organization_id, provider) DO UPDATE SET"
        " settings = EXCLUDED.settings, secret = EXCLUDED.secret, updated_at = now(), updated_by = EXCLUDED.updated_by",
        (tx.org_id, PROVIDER, Jsonb(settings), secret, tx.uow.principal.user_id))
    changes = {k: {"before": before.get(k), "after": settings.get(k)} for k in ("phone_number_id", "business_account_id")
               if before.get(k) != settings.get(k)}
    changes.update({k: {"before": "(set)" if stored.get(k) else None, "after": "(set)"} for k in given})
    if changes:
        tx.record("connection", PROVIDER, "connected" if current is None else "updated", changes)


# -- the Cloud API ------------------------------------------------------------------------------------------------
class CloudError(Exception):
    """WhatsApp refused a call (nothing was done). `message` is in our words, for the model."""

    def __init__(self, message: str, *, code: int | None = None, title: str = "", http_status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.title = title
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after


class OutcomeUnknown(Exception):
    """The request went out but no answer came back (timeout, connection lost): it may have been done."""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(1.0, min(3600.0, float(value))) if value else None
    except ValueError:
        return None


def error_from(status: int, body: Any, headers: Any) -> CloudError:
    """The Graph API's error answer (`{"error": {"code", "message", "error_data": {"details"}}}`) in our words."""
    error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    title = str(error.get("message") or "")[:300]
    details = error.get("error_data", {}).get("details") if isinstance(error.get("error_data"), dict) else None
    shown = f" ({code}{': ' + title if title else ''})" if code is not None else f" (HTTP {status})"
    after = _retry_after(headers.get("retry-after") if headers is not None else None)
    if status == 429 or code in RATE_LIMIT_CODES:
        wait = f"; try again in {after:.0f} s" if after else "; try again in a few minutes"
        return CloudError(f"WhatsApp's rate limit was hit{shown}: nothing was sent{wait}", code=code, title=title,
                          http_status=status, retryable=True, retry_after=after)
    if code == REENGAGEMENT:
        return CloudError(f"WhatsApp refused the message{shown}: more than 24 hours have passed since the customer's "
                          "last message; send an approved template with crm_whatsapp_send_template", code=code,
                          title=title, http_status=status)
    if status == 401 or code in TOKEN_CODES:
        return CloudError(f"WhatsApp refused the access token{shown}: it is wrong, expired or revoked; an admin sets a "
                          "new one with crm_settings_update_organization (whatsapp.access_token)", code=code, title=title,
                          http_status=status)
    if status >= 500 or code in TEMPORARY_CODES:
        return CloudError(f"WhatsApp had a temporary error{shown}: nothing was sent; try again shortly", code=code,
                          title=title, http_status=status, retryable=True, retry_after=after)
    detail = f": {str(details)[:300]}" if details else ""
    return CloudError(f"WhatsApp refused the request{shown}{detail}", code=code, title=title, http_status=status)


class CloudApi:
    """One organization's calls to the Graph API (a new HTTP client per use: calls are few and short)."""

    def __init__(self, connection: Connection, settings: CloudSettings | None = None) -> None:
        self.connection = connection
        self.settings = settings or CloudSettings.from_env()

    def _client(self) -> Any:
        import httpx2

        return httpx2.Client(timeout=self.settings.timeout, follow_redirects=False,
                             headers={"Authorization": f"Bearer {self.connection.access_token}"})

    def _request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None,
                 unknown_outcome: bool = False) -> Any:
        """JSON in, JSON out. Connection failures before the request went out are retryable errors; a lost answer
        is OutcomeUnknown when `unknown_outcome` (a send), else a retryable error."""
        import httpx2

        url = path if path.startswith(("http://", "https://")) else f"{self.settings.base_url}/{path.lstrip('/')}"
        try:
            with self._client() as http:
                response = http.request(method, url, json=json_body, params=params)
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout):
            raise CloudError("WhatsApp's API could not be reached: nothing was sent; try again shortly",
                             retryable=True) from None
        except httpx2.HTTPError as e:
            log.warning("whatsapp call lost its answer error=%s", describe(e))
            if unknown_outcome:
                raise OutcomeUnknown from None
            raise CloudError("WhatsApp's API did not answer in time; try again shortly", retryable=True) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise error_from(response.status_code, body, response.headers)
        if not isinstance(body, dict):
            raise CloudError("WhatsApp's API answered something unexpected", retryable=True,
                             http_status=response.status_code)
        return body

    # -- messages ---------------------------------------------------------------------------------------------------
    def send(self, to: str, message: dict[str, Any], callback: str) -> str:
        """Send one message (`message` holds `type` and its part); returns WhatsApp's message id."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "biz_opaque_callback_data": callback, **message}
        answer = self._request("POST", f"{self.connection.phone_number_id}/messages", json_body=body,
                               unknown_outcome=True)
        messages = answer.get("messages")
        wamid = messages[0].get("id") if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
        if not isinstance(wamid, str) or not wamid:
            raise OutcomeUnknown
        return wamid[:200]

    def mark_read(self, wamid: str) -> None:
        self._request("POST", f"{self.connection.phone_number_id}/messages",
                      json_body={"messaging_product": "whatsapp", "status": "read", "message_id": wamid})

    # -- templates ------------------------------------------------------------------------------------------------
    def templates(self, *, name: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The WhatsApp Business Account's templates (every status), following the API's pages up to `limit`."""
        account = self.connection.business_account_id
        if not account:
            raise CloudError("the WhatsApp Business Account id is not known yet: an admin sets "
                             "whatsapp.business_account_id with crm_settings_update_organization (or it is learned "
                             "from the first webhook delivery)")
        params: dict[str, Any] | None = {"fields": "name,status,language,category,components", "limit": 100}
        if name:
            params["name"] = name
        path = f"{account}/message_templates"
        out: list[dict[str, Any]] = []
        for _ in range(20):
            page = self._request("GET", path, params=params)
            out += [t for t in page.get("data") or [] if isinstance(t, dict)]
            following = (page.get("paging") or {}).get("next") if isinstance(page.get("paging"), dict) else None
            after = ((page.get("paging") or {}).get("cursors") or {}).get("after") if isinstance(page.get("paging"), dict) else None
            if len(out) >= limit or not following or not after:
                break
            params = {**(params or {}), "after": after}
        return out[:limit]

    # -- media ----------------------------------------------------------------------------------------------------
    def media(self, media_id: str) -> dict[str, Any]:
        """GET /{media_id}: a short-lived URL (it needs the access token too), the MIME type and size."""
        if not re.match(r"^[A-Za-z0-9_.:-]{1,200}$", media_id):
            raise CloudError("not a WhatsApp media id")
        return self._request("GET", media_id, params={"phone_number_id": self.connection.phone_number_id})

    def download(self, url: str) -> tuple[bytes, str]:
        import httpx2

        try:
            with self._client() as http, http.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise CloudError(f"WhatsApp refused the media download (HTTP {response.status_code})",
                                     http_status=response.status_code, retryable=response.status_code >= 500)
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_MEDIA_BYTES:
                        raise CloudError("the media is larger than 100 MB")
                    chunks.append(chunk)
                return b"".join(chunks), response.headers.get("content-type", "application/octet-stream")
        except httpx2.HTTPError:
            raise CloudError("WhatsApp's media could not be downloaded; try again shortly", retryable=True) from None


def template_body(template: dict[str, Any]) -> str | None:
    """The BODY component's text of a template as the API lists it."""
    for component in template.get("components") or []:
        if isinstance(component, dict) and str(component.get("type", "")).upper() == "BODY":
            text = component.get("text")
            return text if isinstance(text, str) else None
    return None
