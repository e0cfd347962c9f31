"""Sending newsletters: SMTP settings, DKIM keys and signatures, tracking links, quota, and the background sender.

Settings (environment):
- `FLUSIA_SMTP_URL`: `smtp://user:pass@host:port` (plain, or `?starttls=1`), `smtps://...` (TLS from the start),
  parsed by application/mail.py (with `FLUSIA_SMTP_TIMEOUT`). Without it nothing is sent and sending tools say so.
- `FLUSIA_SMTP_CONNECTIONS` (4): connections the sender keeps open, each sending one message at a time.
- `FLUSIA_NEWSLETTER_SIGNERS` (0): processes that build and DKIM-sign messages beside the sending loop.
- `FLUSIA_SMTP_RETRY_SECONDS` (30), `FLUSIA_SMTP_MAX_ATTEMPTS` (5): a transient failure (4xx, lost connection)
  is retried after 30 s, 60 s, 120 s, ...; after the last attempt the delivery is failed. A permanent failure
  (5xx) fails the delivery at once and marks the subscriber bounced in the campaign's lists.
- `FLUSIA_NEWSLETTER_MONTHLY_QUOTA` (10000): messages an organization may send per calendar month (its time
  zone), unless `newsletter_quotas` sets its own.
- `FLUSIA_SPF_INCLUDE`: the SPF mechanism domains must publish (`include:<value>`); default `a:<SMTP host>`
  (`ip4:`/`ip6:` for an address).
- `FLUSIA_DNS_SERVER` (`host:port`): the resolver `verify_domain` asks, instead of the system's.
- `FLUSIA_SECRET_KEY`: the key DKIM private keys are encrypted with (AES-256-GCM, application/secrets.py, which
  says where the key comes from when it is not set).

A campaign's recipients are written to `campaign_deliveries` in the same statement as the event that starts the
sending (see `start_sending`). The sender claims a few queued rows (`claimed`) and builds and signs their messages
in one go off its event loop (the next batch while the current one is sent). For each message it opens the SMTP
envelope (MAIL FROM, RCPT TO: nothing is delivered yet) while it records the row `sending`, sends the message (DATA)
only once that is committed (an envelope whose row was cancelled meanwhile is reset), and records `sent` with the
Message-ID right after, in the same statement as the next row's `sending`. Each connection is kept open for the
following messages and opened again after a failure. A stopped sender finishes the messages it has in flight,
puts the rows it claimed but did not start back in the queue and claims no more, so a restart sends nobody twice
and skips nobody. After a crash
(no clean stop) a row can be left `sending`: its message may or may not have left, so it is failed as
`interrupted` rather than sent twice. Only one sender runs per database (advisory lock).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.utils import formataddr, formatdate
from html import escape
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID, uuid4

from application import attachments
from application import secrets as org_secrets
from application.mail import SmtpSettings
from application.logsafe import describe
from application.organization import org_settings
from application.public import public_base
from application.store import SideWrite
from domain.errors import DomainError
from domain.newsletter import (Campaign, Engagement, MailingList, is_blacklisted, render)
from projections import newsletter as newsletter_q

log = logging.getLogger("flusia.newsletter")
DEFAULT_QUOTA = 10_000
SELECTOR = "flusia"
SENDER_LOCK = 72_000_014
_TOKEN = re.compile(r"^([0-9a-f]{32})\.([A-Za-z0-9_-]{22})$")


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


# -- SMTP settings: FLUSIA_SMTP_URL, parsed by the shared mail module ----------------------------------------------
def smtp_settings() -> SmtpSettings:
    """The configured server, or a refusal the model can relay (sending is not configured on this server)."""
    try:
        settings = SmtpSettings.from_env()
    except ValueError:
        settings = None  # malformed: the operator sees it at start-up (application.mail), the model gets a refusal
    if settings is None:
        raise DomainError("e-mail sending is not configured on this server (FLUSIA_SMTP_URL); ask the operator",
                          field="campaign_id")
    return settings


def spf_mechanism() -> str:
    include = os.environ.get("FLUSIA_SPF_INCLUDE", "").strip()
    if include:
        return f"include:{include}"
    try:
        settings = SmtpSettings.from_env()
    except ValueError:
        settings = None
    host = settings.host if settings else "localhost"
    try:
        return f"ip{ip_address(host).version}:{host}"
    except ValueError:
        return f"a:{host}"


# -- DKIM private keys, encrypted at rest by application/secrets (AES-256-GCM, FLUSIA_SECRET_KEY) ----------------
def seal_private_key(conn: Any, org_id: UUID, domain_id: UUID, pem: bytes) -> bytes:
    sealed = org_secrets.encrypt(org_secrets.server_key(conn), pem.decode("ascii"),
                                 context=org_secrets.context_for(org_id, f"dkim:{domain_id}"))
    return sealed.encode("ascii")


def open_private_key(conn: Any, org_id: UUID, domain_id: UUID, sealed: bytes) -> bytes:
    return org_secrets.decrypt(org_secrets.server_key(conn), bytes(sealed).decode("ascii"),
                               context=org_secrets.context_for(org_id, f"dkim:{domain_id}")).encode("ascii")


# -- DKIM (RFC 6376, rsa-sha256, relaxed/relaxed) --------------------------------------------------------------------
def generate_dkim_key() -> tuple[bytes, str]:
    """(private key PEM, public key as the base64 DER to publish in `p=`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def load_private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem, password=None)


_WSP = re.compile(rb"[ \t]+")
SIGNED_HEADERS = ("from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type",
                  "list-unsubscribe", "list-unsubscribe-post")


def _relaxed_body(body: bytes) -> bytes:
    text = body.replace(b"\r\n", b"\n")
    if b"\t" not in text and b"  " not in text and b" \n" not in text and not text.endswith(b" "):
        # already relaxed (the bodies we write: base64 lines and part headers): only the empty lines at the end go
        text = text.rstrip(b"\n")
        return text.replace(b"\n", b"\r\n") + b"\r\n" if text else b""
    lines = text.split(b"\n")
    out = [_WSP.sub(b" ", line).rstrip(b" \t") for line in lines]
    while out and out[-1] == b"":
        out.pop()
    return b"".join(line + b"\r\n" for line in out)


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return name.strip().lower() + b":" + _WSP.sub(b" ", value).strip(b" \t")


def _split(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, _, body = message.partition(b"\r\n\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers, body


def dkim_sign(message: bytes, *, domain: str, selector: str, private_key: Any, now: int | None = None) -> bytes:
    """The message with a `DKIM-Signature` header prepended, signing the headers in SIGNED_HEADERS it has."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    headers, body = _split(message)
    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
    present = {name.strip().lower(): (name, value) for name, value in reversed(headers)}
    signed = [h for h in SIGNED_HEADERS if h.encode() in present]
    timestamp = int(time.time() if now is None else now)
    value = (f" v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};\r\n\tt={timestamp};"
             f" h={':'.join(signed)};\r\n\tbh={body_hash};\r\n\tb=")
    data = b"".join(_relaxed_header(*present[h.encode()]) + b"\r\n" for h in signed)
    data += _relaxed_header(b"DKIM-Signature", value.encode())
    signature = private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    header = b"DKIM-Signature:" + value.encode() + base64.b64encode(signature) + b"\r\n"
    return header + message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- tracking links ----------------------------------------------------------------------------------------------
def _mac(secret: bytes, text: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, text.encode(), hashlib.sha256).digest()).decode()[:22]


def token(secret: bytes, purpose: str, delivery_id: UUID) -> str:
    """`<delivery id hex>.<HMAC>`: the only credential of a tracking or unsubscribe link."""
    return f"{delivery_id.hex}.{_mac(secret, f'{purpose}:{delivery_id.hex}')}"


def click_signature(secret: bytes, delivery_id: UUID, index: int) -> str:
    """The signature of a click link `/t/c/<delivery id hex>/<link index>/<signature>`."""
    return _mac(secret, f"c:{delivery_id.hex}:{index}")


def check_token(secret: bytes, purpose: str, value: str, index: int | None = None) -> UUID | None:
    """The delivery id a link names, when its signature is right; None otherwise."""
    m = _TOKEN.match(value or "")
    if not m:
        return None
    text = f"c:{m.group(1)}:{index}" if purpose == "c" else f"{purpose}:{m.group(1)}"
    if not hmac.compare_digest(_mac(secret, text), m.group(2)):
        return None
    return UUID(hex=m.group(1))


def links_for(secret: bytes, delivery_id: UUID, base: str | None = None) -> dict[str, str]:
    base = base or public_base()
    return {"open": f"{base}/t/o/{token(secret, 'o', delivery_id)}.gif",
            "unsubscribe": f"{base}/t/u/{token(secret, 'u', delivery_id)}",
            "click": f"{base}/t/c/{delivery_id.hex}"}


# -- quota ----------------------------------------------------------------------------------------------------------
def quota(conn: Any, org_id: UUID) -> dict[str, int]:
    row = conn.execute("SELECT monthly_quota FROM newsletter_quotas WHERE organization_id = %s", (org_id,)).fetchone()
    limit = (row["monthly_quota"] if isinstance(row, dict) else row[0]) if row else _int_env(
        "FLUSIA_NEWSLETTER_MONTHLY_QUOTA", DEFAULT_QUOTA)
    tz = org_settings(conn, org_id)["timezone"]
    used_row = conn.execute(
        "SELECT count(*)::int AS n FROM campaign_deliveries WHERE organization_id = %s AND status <> 'cancelled'"
        " AND created_at >= (date_trunc('month', now() AT TIME ZONE %s) AT TIME ZONE %s)", (org_id, tz, tz)).fetchone()
    used = used_row["n"] if isinstance(used_row, dict) else used_row[0]
    return {"monthly_quota": limit, "used": used, "remaining": max(limit - used, 0)}


def check_quota(conn: Any, org_id: UUID, needed: int, *, field: str = "campaign_id") -> None:
    q = quota(conn, org_id)
    if needed > q["remaining"]:
        raise DomainError(
            f"this needs {needed:,} messages but only {q['remaining']:,} of the monthly quota of {q['monthly_quota']:,}"
            f" remain ({q['used']:,} used this month); nothing was sent", field=field)


# -- starting a campaign -------------------------------------------------------------------------------------------
def verified_sender(conn: Any, org_id: UUID, from_email: str) -> dict[str, Any]:
    """The verified sender domain of the address, or a refusal naming what to do."""
    domain = from_email.rsplit("@", 1)[-1]
    row = newsletter_q.domain_named(conn, org_id, domain)
    if row is None:
        raise DomainError(f"the sender domain {domain} is not added; add it with crm_newsletter_add_domain, publish "
                          "its records and verify it with crm_newsletter_verify_domain", field="from_email")
    if not row["verified"]:
        raise DomainError(f"the sender domain {domain} is not verified; publish its DNS records and run "
                          "crm_newsletter_verify_domain", field="from_email")
    return row


def recipients(conn: Any, org_id: UUID, campaign: Campaign) -> list[dict[str, Any]]:
    """The campaign's audience now: subscribed, not blacklisted (address or domain), each address once."""
    blocked = newsletter_q.blacklist_values(conn, org_id)
    rows = newsletter_q.audience(conn, org_id, [UUID(i) for i in campaign.list_ids])
    return [r for r in rows if not is_blacklisted(r["email"], blocked)]


def start_sending(conn: Any, org_id: UUID, campaign: Campaign) -> SideWrite:
    """Check the sender domain and quota, record SendingStarted, and return the write that queues every recipient
    (committed in the same statement as the event: a campaign is never sending without its deliveries)."""
    smtp_settings()
    verified_sender(conn, org_id, campaign.from_email)
    audience = recipients(conn, org_id, campaign)
    if not audience:
        raise DomainError("the campaign's lists have no subscribed, non-blacklisted addresses", field="campaign_id")
    check_quota(conn, org_id, len(audience))
    campaign.start_sending(len(audience))
    payload = json.dumps([{"list_id": str(r["list_id"]), "email": r["email"], "first_name": r["first_name"],
                           "last_name": r["last_name"], "client_name": r["client_name"]} for r in audience])
    return SideWrite(
        "INSERT INTO campaign_deliveries (id, organization_id, campaign_id, list_id, email, first_name, last_name,"
        " client_name) SELECT gen_random_uuid(), %s, %s, r.list_id, r.email, r.first_name, r.last_name, r.client_name"
        " FROM jsonb_to_recordset(%s::jsonb) AS r(list_id uuid, email text, first_name text, last_name text,"
        " client_name text)", (org_id, campaign.id, payload))


def cancel_deliveries(org_id: UUID, campaign_id: UUID) -> SideWrite:
    return SideWrite("UPDATE campaign_deliveries SET status = 'cancelled', updated_at = now()"
                     " WHERE organization_id = %s AND campaign_id = %s AND status IN ('queued', 'claimed')",
                     (org_id, campaign_id))


def delivery_counts(conn: Any, org_id: UUID, campaign_id: UUID) -> dict[str, int]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status IN ('queued', 'claimed'))::int AS queued,"
        " count(*) FILTER (WHERE status = 'sending')::int AS sending,"
        " count(*) FILTER (WHERE status = 'sent')::int AS sent,"
        " count(*) FILTER (WHERE status = 'failed')::int AS failed,"
        " count(*) FILTER (WHERE status = 'failed' AND bounced)::int AS bounced,"
        " count(*) FILTER (WHERE status = 'cancelled')::int AS cancelled"
        " FROM campaign_deliveries WHERE organization_id = %s AND campaign_id = %s AND kind = 'campaign'",
        (org_id, campaign_id)).fetchone()
    return dict(row)


def delivery_totals(conn: Any, org_id: UUID, campaign_ids: list[UUID]) -> dict[UUID, dict[str, int]]:
    rows = conn.execute(
        "SELECT campaign_id, count(*) FILTER (WHERE status = 'sent')::int AS sent,"
        " count(*) FILTER (WHERE status = 'failed' AND bounced)::int AS bounced,"
        " count(*) FILTER (WHERE status = 'failed')::int AS failed"
        " FROM campaign_deliveries WHERE organization_id = %s AND campaign_id = ANY(%s) AND kind = 'campaign'"
        " GROUP BY campaign_id", (org_id, campaign_ids)).fetchall()
    return {r["campaign_id"]: r for r in rows}


# -- building one message ---------------------------------------------------------------------------------------------
@dataclass
class Content:
    """What every message of a campaign shares."""

    campaign_id: UUID
    organization_id: UUID
    subject: str
    from_name: str
    from_email: str
    reply_to: str | None
    html_body: str | None
    text_body: str | None
    links: list[str]
    domain: str
    selector: str
    private_key: Any
    private_pem: bytes = b""
    """The key as PEM, for signer processes (a key object does not cross a process boundary)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "private_key": None}


def load_content(conn: Any, org_id: UUID, campaign: Campaign) -> Content:
    sender = verified_sender(conn, org_id, campaign.from_email)
    row = conn.execute("SELECT private_key FROM newsletter_domain_keys WHERE domain_id = %s AND organization_id = %s",
                       (sender["id"], org_id)).fetchone()
    if row is None:
        raise DomainError("the sender domain has no signing key; remove and add it again", field="from_email")
    sealed = row["private_key"] if isinstance(row, dict) else row[0]
    try:
        pem = open_private_key(conn, org_id, sender["id"], sealed)
    except org_secrets.SecretUnavailable:
        raise DomainError("the sender domain's signing key cannot be read with this server's FLUSIA_SECRET_KEY; "
                          "remove the domain and add it again", field="from_email") from None
    return Content(campaign.id, org_id, campaign.subject, campaign.from_name, campaign.from_email, campaign.reply_to,
                   campaign.html_body, campaign.text_body, campaign.links, sender["domain"], sender["selector"],
                   load_private_key(pem), pem)


def _html_with_tracking(html: str, links: list[str], click_base: str, tokens: dict[int, str], pixel: str) -> str:
    from domain.newsletter import html_links

    out, last = [], 0
    for start, end, url in html_links(html):
        out.append(html[last:start])
        index = links.index(url) if url in links else -1
        out.append(f"{click_base}/{index}/{tokens[index]}" if index >= 0 else url)
        last = end
    out.append(html[last:])
    body = "".join(out)
    tag = f'<img src="{pixel}" width="1" height="1" alt="" style="display:none">'
    return body.replace("</body>", tag + "</body>") if "</body>" in body else body + tag


def _header_text(value: str) -> str:
    """A header value as ASCII: unchanged when it is, RFC 2047 encoded words (folded) when it is not."""
    value = " ".join(value.split())  # no CR/LF from a placeholder can start a header of its own
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def _part(mime: str, text: str) -> str:
    encoded = base64.encodebytes(text.encode("utf-8")).decode("ascii").replace("\n", "\r\n")
    return f"Content-Type: {mime}; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}"


def build_message(content: Content, recipient: dict[str, Any], delivery_id: UUID, secret: bytes,
                  base: str | None = None) -> tuple[bytes, str]:
    """The signed message for one recipient and its Message-ID: text and HTML alternatives (base64), the
    personal unsubscribe link in the body and in `List-Unsubscribe`, tracked links and the open pixel. Written
    by hand rather than with `email.message`, which measured six times slower than the DKIM signature itself."""
    urls = links_for(secret, delivery_id, base)
    values = {"subscriber.email": recipient["email"], "subscriber.first_name": recipient.get("first_name") or "",
              "subscriber.last_name": recipient.get("last_name") or "",
              "client.business_name": recipient.get("client_name") or "", "campaign.subject": content.subject,
              "unsubscribe_url": urls["unsubscribe"]}
    message_id = f"<{delivery_id.hex}@{content.domain}>"
    headers = [
        f"From: {formataddr((content.from_name, content.from_email), charset='utf-8')}",
        f"To: {recipient['email']}",
        f"Subject: {_header_text(render(content.subject, values))}",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: {message_id}",
        *([f"Reply-To: {content.reply_to}"] if content.reply_to else []),
        "MIME-Version: 1.0",
        f"List-Unsubscribe: <{urls['unsubscribe']}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    ]
    text = render(content.text_body, values) if content.text_body else None
    if text is not None and "unsubscribe_url" not in (content.text_body or ""):
        text += f"\n\n--\nUnsubscribe: {urls['unsubscribe']}\n"
    if content.html_body:
        html = render(content.html_body, values, escape=lambda v: escape(v, quote=True))
        if "unsubscribe_url" not in content.html_body:
            footer = f'<p style="font-size:12px"><a href="{escape(urls["unsubscribe"])}">Unsubscribe</a></p>'
            html = html.replace("</body>", footer + "</body>") if "</body>" in html else html + footer
        tokens = {i: click_signature(secret, delivery_id, i) for i in range(len(content.links))}
        html = _html_with_tracking(html, content.links, urls["click"], tokens, urls["open"])
        text = text or "This message is best viewed as HTML.\n\nUnsubscribe: " + urls["unsubscribe"]
        boundary = f"=_{delivery_id.hex}"
        headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = (f"--{boundary}\r\n{_part('text/plain', text)}--{boundary}\r\n{_part('text/html', html)}"
                f"--{boundary}--\r\n")
        raw = "\r\n".join(headers) + "\r\n\r\n" + body
    else:
        single = _part("text/plain", text or "")
        raw = "\r\n".join(headers) + "\r\n" + single
    return dkim_sign(raw.encode("utf-8"), domain=content.domain, selector=content.selector,
                     private_key=content.private_key), message_id


_worker_keys: dict[bytes, Any] = {}


def build_batch(jobs: list[tuple[Content, dict[str, Any]]], secret: bytes, base: str | None
                ) -> list[tuple[bytes, str] | str]:
    """The messages of a claimed batch, built and signed in one call off the sending loop (one hand-over per batch,
    not per message); for a message that could not be built, why (no recipient data is in it)."""
    out: list[tuple[bytes, str] | str] = []
    for content, row in jobs:
        try:
            out.append(build_message(content, row, row["id"], secret, base))
        except Exception as e:  # noqa: BLE001 - one message's bug must not lose the batch
            out.append(describe(e))
    return out


def build_batch_in_worker(jobs: list[tuple[Content, dict[str, Any]]], secret: bytes, base: str | None
                          ) -> list[tuple[bytes, str] | str]:
    """`build_batch` in a signer process: each campaign key is loaded once per process."""
    for content, _ in jobs:
        if content.private_key is None:
            digest = hashlib.sha256(content.private_pem).digest()
            if digest not in _worker_keys:
                _worker_keys[digest] = load_private_key(content.private_pem)
            content.private_key = _worker_keys[digest]
    return build_batch(jobs, secret, base)


# -- the SMTP side ---------------------------------------------------------------------------------------------------
class Permanent(Exception):
    """The server refused this recipient or message for good (5xx)."""


class Transient(Exception):
    """Try again later (4xx, connection lost, timeout)."""


_PLAIN_MAILBOX = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def _mailbox(address: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO: a plain address as it is (what aiosmtplib's parsing would give, without
    its cost per message), anything else through aiosmtplib's own parsing and checks (ValueError when unsafe)."""
    if _PLAIN_MAILBOX.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    from aiosmtplib.email import quote_address

    return quote_address(address).encode("ascii")


def _data_size(message: bytes) -> int:
    """The SIZE (RFC 1870) of a message as DATA transmits it (CRLF line ends, a final CRLF)."""
    if message.endswith(b"\r\n") and message.count(b"\n") == message.count(b"\r") == message.count(b"\r\n"):
        return len(message)  # already so: the messages built here
    from aiosmtplib.protocol import normalize_message_line_endings

    return len(normalize_message_line_endings(message))


class SmtpConnection:
    """One SMTP connection, opened on first use and re-opened after a failure."""

    def __init__(self, settings: SmtpSettings, timeout: float | None = None) -> None:
        self.settings = settings
        self.timeout = timeout or settings.timeout
        self.client: Any = None

    async def _connect(self) -> Any:
        import aiosmtplib

        s = self.settings
        client = aiosmtplib.SMTP(hostname=s.host, port=s.port, use_tls=s.use_tls, start_tls=s.start_tls,
                                 timeout=self.timeout, validate_certs=os.environ.get("FLUSIA_SMTP_VERIFY", "1") != "0")
        await client.connect()
        if s.username:
            await client.login(s.username, s.password or "")
        return client

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """One whole SMTP transaction: the envelope, then the message."""
        await self.envelope(sender, recipient, message)
        return await self.data(message)

    async def envelope(self, sender: str, recipient: str, message: bytes) -> None:
        """MAIL FROM (with the message's SIZE when the server takes it) and RCPT TO. Nothing is delivered until
        `data`: an envelope can be dropped with `abandon` (RSET), so it may go out while the delivery is still being
        recorded as `sending`."""
        import aiosmtplib

        async def run() -> None:
            if self.client is None or not self.client.is_connected:
                self.client = await self._connect()
            client = self.client
            await client._ehlo_or_helo_if_needed()
            options = [b"SIZE=%d" % _data_size(message)] if client.supports_extension("size") else []
            response = await client.execute_command(b"MAIL", b"FROM:" + _mailbox(sender), *options)
            if response.code != 250:
                raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
            response = await client.execute_command(b"RCPT", b"TO:" + _mailbox(recipient))
            if response.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)

        await self._mapped(run())

    async def data(self, message: bytes) -> str:
        """The message, after `envelope`: once the server answers, it is delivered."""
        response = await self._mapped(self.client.data(message))
        return response.message

    async def abandon(self, envelope: asyncio.Future[Any]) -> None:
        """Drop an envelope whose message will not be sent (its delivery was cancelled meanwhile, or recording it
        failed): wait for it, then reset the transaction (or close a connection that failed)."""
        try:
            await envelope
        except (Permanent, Transient, asyncio.CancelledError):
            return
        if self.client is not None:
            await self._reset()

    async def _mapped(self, call: Any) -> Any:
        """An SMTP call's failures as Permanent (5xx: the transaction is reset) or Transient (4xx, connection lost,
        timeout: a broken connection is closed and opened again for the next message)."""
        import aiosmtplib

        try:
            return await call
        except aiosmtplib.SMTPRecipientsRefused as e:
            code = e.recipients[0].code if e.recipients else 550
            await self._reset()
            raise (Permanent if 500 <= code < 600 else Transient)(f"smtp {code}") from None
        except aiosmtplib.SMTPResponseException as e:
            if isinstance(e, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError)):
                await self.close()
                raise Transient("connection") from None
            await self._reset()
            raise (Permanent if 500 <= e.code < 600 else Transient)(f"smtp {e.code}") from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as e:
            await self.close()
            raise Transient(type(e).__name__) from None

    async def _reset(self) -> None:
        if self.client is None:
            return
        try:
            await self.client.rset()
        except Exception:
            await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.quit()
            except Exception:
                client.close()


def send_now(messages: list[tuple[str, str, bytes]]) -> list[str | None]:
    """Send a few messages at once, synchronously (test sends): for each, None or why it failed."""
    settings = smtp_settings()

    async def run() -> list[str | None]:
        conn = SmtpConnection(settings, timeout=15)
        out: list[str | None] = []
        try:
            for sender, recipient, message in messages:
                try:
                    await conn.send(sender, recipient, message)
                    out.append(None)
                except (Permanent, Transient) as e:
                    out.append(str(e))
        finally:
            await conn.close()
        return out

    return asyncio.run(run())


# -- the background sender -----------------------------------------------------------------------------------------
CLAIM = """
UPDATE campaign_deliveries SET status = 'claimed', updated_at = now()
WHERE id IN (SELECT id FROM campaign_deliveries WHERE status = 'queued' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, organization_id, campaign_id, list_id, email, first_name, last_name, client_name, attempts
"""
SENDING = ("UPDATE campaign_deliveries SET status = 'sending', attempts = attempts + 1, updated_at = now()"
           " WHERE id = %(next)s AND status = 'claimed' RETURNING attempts")
SENT_THEN_SENDING = (
    "WITH sent AS (UPDATE campaign_deliveries SET status = 'sent', message_id = %(message_id)s, sent_at = now(),"
    " error = NULL, updated_at = now() WHERE id = %(sent)s) " + SENDING)
SENT = ("UPDATE campaign_deliveries SET status = 'sent', message_id = %(message_id)s, sent_at = now(), error = NULL,"
        " updated_at = now() WHERE id = %(sent)s")
REQUEUE = ("UPDATE campaign_deliveries SET status = 'queued', updated_at = now()"
           " WHERE id = ANY(%s) AND status = 'claimed'")
CLAIM_BATCH = 16


class NewsletterSender:
    """The background job: starts due scheduled campaigns, sends queued deliveries over a few SMTP connections,
    records each result, and records a campaign as sent when none of its deliveries is left."""

    def __init__(self, store: Any, database_url: str, *, connections: int | None = None, poll: float = 0.25,
                 signers: int | None = None) -> None:
        self.store = store
        self.database_url = database_url
        self.connections = connections or max(1, _int_env("FLUSIA_SMTP_CONNECTIONS", 4))
        self.signers = signers if signers is not None else max(0, _int_env("FLUSIA_NEWSLETTER_SIGNERS", 0))
        """Processes that build and DKIM-sign messages beside the sending loop (0: a thread of this process). On a
        host with spare cores they take the per-message CPU off the loop; the default keeps to one process."""
        self._pool: Any = None
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._contents: dict[UUID, Content | None] = {}
        self._secret: bytes | None = None
        self.sent = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="newsletter-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Claim nothing more, finish the messages in flight and record them, then return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                asyncio.run(self._main())
            except Exception as e:
                log.error("newsletter sender failed; restarting error=%s", describe(e))
                self._stop.wait(2.0)

    async def _main(self) -> None:
        import psycopg
        from psycopg.rows import dict_row

        lock = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            while not self._stop.is_set():
                got = (await (await lock.execute("SELECT pg_try_advisory_lock(%s)", (SENDER_LOCK,))).fetchone())[0]
                if got:
                    break
                await asyncio.sleep(1.0)
            if self._stop.is_set():
                return
            control = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True, row_factory=dict_row)
            try:
                await self._recover(control)
                try:
                    settings = SmtpSettings.from_env()
                except ValueError:
                    settings = None
                    log.error("FLUSIA_SMTP_URL is malformed; no newsletter is sent")
                lanes = [asyncio.create_task(self._lane(settings)) for _ in range(self.connections)] if settings else []
                while not self._stop.is_set():
                    await self._housekeeping(control)
                    await asyncio.sleep(self.poll)
                await asyncio.gather(*lanes, return_exceptions=True)
                await self._housekeeping(control)
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = None
                await control.close()
        finally:
            await lock.close()

    async def _recover(self, conn: Any) -> None:
        """Rows a sender that died had claimed but not started go back to the queue; rows it left `sending` may
        have gone out, so they are never sent again."""
        await conn.execute("UPDATE campaign_deliveries SET status = 'queued', updated_at = now()"
                           " WHERE status = 'claimed'")
        cur = await conn.execute("UPDATE campaign_deliveries SET status = 'failed', error = 'interrupted',"
                                 " updated_at = now() WHERE status = 'sending' AND kind = 'campaign'")
        if cur.rowcount:
            log.warning("newsletter deliveries interrupted by a crash were failed count=%s", cur.rowcount)

    # -- scheduled and finished campaigns -----------------------------------------------------------------------
    async def _housekeeping(self, conn: Any) -> None:
        try:
            due = await (await conn.execute(
                "SELECT id, organization_id FROM newsletter_campaigns WHERE status = 'scheduled'"
                " AND scheduled_at <= now() ORDER BY scheduled_at LIMIT 20")).fetchall()
            for row in due:
                await asyncio.to_thread(self._start_scheduled, row["organization_id"], row["id"])
            sending = await (await conn.execute(
                "SELECT c.id, c.organization_id FROM newsletter_campaigns c WHERE c.status = 'sending'"
                " AND NOT EXISTS (SELECT 1 FROM campaign_deliveries d WHERE d.campaign_id = c.id"
                "   AND d.status IN ('queued', 'claimed', 'sending'))")).fetchall()
            for row in sending:
                await asyncio.to_thread(self._finish, row["organization_id"], row["id"])
        except Exception as e:
            log.error("newsletter housekeeping failed error=%s", describe(e))

    def _save(self, org_id: UUID, tool: str, change: Any) -> None:
        """Load, change and save aggregates as the sender (no user), retrying optimistic-concurrency conflicts."""
        from eventsourcing.persistence import IntegrityError

        for _ in range(10):
            result = change()
            if result is None:
                return
            aggregates, side_writes = result
            cause = {"organization_id": org_id, "user_id": None, "token_id": None, "oauth_client_id": None,
                     "correlation_id": uuid4(), "tool": tool}
            try:
                self.store.save(*aggregates, cause=cause, side_writes=side_writes)
                return
            except IntegrityError:
                continue

    def _campaign(self, campaign_id: UUID) -> Campaign | None:
        try:
            agg = self.store.repository.get(campaign_id)
        except Exception:
            return None
        return agg if isinstance(agg, Campaign) and not agg.deleted else None

    def _start_scheduled(self, org_id: UUID, campaign_id: UUID) -> None:
        import psycopg
        from psycopg.rows import dict_row

        def change() -> Any:
            campaign = self._campaign(campaign_id)
            if campaign is None or campaign.status != "scheduled":
                return None
            with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
                try:
                    write = start_sending(conn, org_id, campaign)
                except DomainError as e:
                    campaign.cancel(reason=e.message[:500])
                    return [campaign], []
            return [campaign], [write]

        self._save(org_id, "newsletter_sender", change)

    def _finish(self, org_id: UUID, campaign_id: UUID) -> None:
        import psycopg
        from psycopg.rows import dict_row

        def change() -> Any:
            campaign = self._campaign(campaign_id)
            if campaign is None or campaign.status != "sending":
                return None
            with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
                counts = delivery_counts(conn, org_id, campaign_id)
            if counts["queued"] or counts["sending"]:
                return None
            campaign.finish(sent=counts["sent"], failed=counts["failed"])
            return [campaign], []

        self._save(org_id, "newsletter_sender", change)
        self._contents.pop(campaign_id, None)

    def _bounce(self, org_id: UUID, campaign_id: UUID, email: str) -> None:
        """A permanent failure: the subscriber is bounced in every list of the campaign that has it subscribed."""
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
            campaign = self._campaign(campaign_id)
            list_ids = newsletter_q.subscriber_lists(conn, org_id, email, [UUID(i) for i in campaign.list_ids]) \
                if campaign else []
        for list_id in list_ids:
            def change(list_id: UUID = list_id) -> Any:
                try:
                    mailing_list = self.store.repository.get(list_id)
                except Exception:
                    return None
                if not isinstance(mailing_list, MailingList) or mailing_list.deleted:
                    return None
                try:
                    changed = mailing_list.change_status(email, "bounced", campaign_id=campaign_id, reason="smtp")
                except DomainError:
                    return None
                return ([mailing_list], []) if changed else None

            self._save(org_id, "newsletter_sender", change)

    # -- sending -----------------------------------------------------------------------------------------------
    def _content(self, org_id: UUID, campaign_id: UUID) -> Content | None:
        import psycopg
        from psycopg.rows import dict_row

        if campaign_id not in self._contents:
            campaign = self._campaign(campaign_id)
            content = None
            if campaign is not None:
                with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
                    if self._secret is None:
                        self._secret = attachments.link_secret(conn)
                    try:
                        content = load_content(conn, org_id, campaign)
                    except DomainError:
                        content = None
            self._contents[campaign_id] = content
        return self._contents[campaign_id]

    async def _build(self, jobs: list[tuple[Content, dict[str, Any]]], base: str) -> list[tuple[bytes, str] | str]:
        if self.signers > 0 and self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.signers, mp_context=multiprocessing.get_context("spawn"))
        if self._pool is not None:  # building and signing beside this loop, on other cores
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, build_batch_in_worker, jobs, self._secret, base)
        return await asyncio.to_thread(build_batch, jobs, self._secret, base)

    async def _claim(self, conn: Any, base: str) -> list[tuple[dict[str, Any], Content | None, Any]]:
        """A few queued rows (`claimed`), each with its campaign's content and its message built and signed (or
        why it could not be). Rows claimed here and not handed over go back to the queue."""
        rows = await (await conn.execute(CLAIM, (CLAIM_BATCH,))).fetchall()
        if not rows:
            return []
        try:
            contents: dict[UUID, Content | None] = {}
            for campaign_id, org_id in dict.fromkeys((r["campaign_id"], r["organization_id"]) for r in rows):
                contents[campaign_id] = self._contents[campaign_id] if campaign_id in self._contents \
                    else await asyncio.to_thread(self._content, org_id, campaign_id)
            jobs = [(contents[r["campaign_id"]], r) for r in rows if contents[r["campaign_id"]] is not None]
            built = iter(await self._build(jobs, base) if jobs else [])
            return [(r, contents[r["campaign_id"]], next(built) if contents[r["campaign_id"]] is not None else None)
                    for r in rows]
        except BaseException:
            await conn.execute(REQUEUE, ([r["id"] for r in rows],))
            raise

    async def _lane(self, settings: SmtpSettings) -> None:
        """One SMTP connection's loop. Rows are claimed a few at a time and their messages built and signed off the
        loop, the next batch while this one is sent. For each message: its envelope (MAIL FROM, RCPT TO) goes to
        the server while the row is recorded `sending` (in the same statement as the previous message's `sent`);
        the message itself (DATA) only once that is committed, so a message is never delivered without its row
        saying so. On a stop, the rows claimed but not started go back to the queue."""
        import collections

        import psycopg
        from psycopg.rows import dict_row

        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True, row_factory=dict_row)
        smtp = SmtpConnection(settings)
        retry = _float_env("FLUSIA_SMTP_RETRY_SECONDS", 30.0)
        max_attempts = max(1, _int_env("FLUSIA_SMTP_MAX_ATTEMPTS", 5))
        base = public_base()
        sent: tuple[UUID, str] | None = None  # the last message sent, not yet recorded
        batch: collections.deque[tuple[dict[str, Any], Content | None, Any]] = collections.deque()
        ahead: asyncio.Task[Any] | None = None  # the next batch, being claimed and built
        try:
            while not self._stop.is_set():
                if not batch:
                    task, ahead = ahead or asyncio.create_task(self._claim(conn, base)), None
                    batch.extend(await task)
                    if not batch:
                        if sent is not None:
                            await conn.execute(SENT, {"sent": sent[0], "message_id": sent[1]})
                            sent = None
                        await smtp.close()
                        await asyncio.sleep(self.poll)
                        continue
                    if len(batch) == CLAIM_BATCH:  # more are waiting: the next batch is built while this one goes
                        ahead = asyncio.create_task(self._claim(conn, base))
                row, content, built = batch.popleft()
                if content is None:
                    await conn.execute("UPDATE campaign_deliveries SET status = 'failed', error = 'no_content',"
                                       " updated_at = now() WHERE id = %s AND status = 'claimed'", (row["id"],))
                    continue
                if not isinstance(built, tuple):  # a bug must not lose the row: it waits, queued, for the next attempt
                    log.error("newsletter delivery failed error=%s", built)
                    await conn.execute("UPDATE campaign_deliveries SET status = 'queued', error = 'internal',"
                                       " attempts = attempts + 1, next_attempt_at = now() + interval '60 seconds',"
                                       " updated_at = now() WHERE id = %s AND status = 'claimed'", (row["id"],))
                    continue
                message, message_id = built
                params = {"next": row["id"]}
                if sent is not None:
                    params.update(sent=sent[0], message_id=sent[1])
                envelope = asyncio.ensure_future(smtp.envelope(content.from_email, row["email"], message))
                try:
                    started = await (await conn.execute(SENT_THEN_SENDING if sent else SENDING, params)).fetchone()
                except BaseException:
                    await smtp.abandon(envelope)
                    raise
                sent = None
                if started is None:  # cancelled since it was claimed
                    await smtp.abandon(envelope)
                    continue
                try:
                    await envelope
                    await smtp.data(message)
                except Permanent as e:
                    await conn.execute("UPDATE campaign_deliveries SET status = 'failed', bounced = true, error = %s,"
                                       " updated_at = now() WHERE id = %s", (str(e)[:40], row["id"]))
                    await asyncio.to_thread(self._bounce, row["organization_id"], row["campaign_id"], row["email"])
                    continue
                except Transient as e:
                    attempts = started["attempts"]
                    final = attempts >= max_attempts
                    await conn.execute(
                        "UPDATE campaign_deliveries SET status = %s, error = %s, updated_at = now(),"
                        " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
                        ("failed" if final else "queued", str(e)[:40], retry * 2 ** (attempts - 1), row["id"]))
                    continue
                except Exception as e:  # a bug must not lose the row: it waits, queued, for the next attempt
                    log.error("newsletter delivery failed error=%s", describe(e))
                    await conn.execute("UPDATE campaign_deliveries SET status = 'queued', error = 'internal',"
                                       " next_attempt_at = now() + interval '60 seconds' WHERE id = %s", (row["id"],))
                    continue
                sent = (row["id"], message_id)
                self.sent += 1
        finally:
            try:
                if ahead is not None:
                    try:
                        batch.extend(await ahead)
                    except Exception:  # noqa: BLE001 - its rows went back to the queue
                        pass
                if sent is not None:
                    await conn.execute(SENT, {"sent": sent[0], "message_id": sent[1]})
                if batch:
                    await conn.execute(REQUEUE, ([r[0]["id"] for r in batch],))
            finally:
                await smtp.close()
                await conn.close()


def record_engagement(store: Any, org_id: UUID, campaign_id: UUID, delivery_id: UUID, kind: str,
                      url: str | None) -> None:
    """An open or click, recorded as an event caused by the tracking endpoint (no user)."""
    cause = {"organization_id": org_id, "user_id": None, "token_id": None, "oauth_client_id": None,
             "correlation_id": uuid4(), "tool": "newsletter_tracking"}
    store.save(Engagement(org_id=org_id, campaign_id=campaign_id, delivery_id=delivery_id, kind=kind, url=url),
               cause=cause)


def delivery(conn: Any, delivery_id: UUID) -> dict[str, Any] | None:
    return conn.execute("SELECT id, organization_id, campaign_id, list_id, email, kind FROM campaign_deliveries"
                        " WHERE id = %s", (delivery_id,)).fetchone()


def unsubscribe(store: Any, conn: Any, delivery_row: dict[str, Any]) -> bool:
    """Unsubscribe the recipient of a delivery from the list it was sent through (and the campaign's other lists)."""
    from eventsourcing.persistence import IntegrityError

    org_id, campaign_id, email = delivery_row["organization_id"], delivery_row["campaign_id"], delivery_row["email"]
    try:
        campaign = store.repository.get(campaign_id)
        list_ids = [UUID(i) for i in campaign.list_ids]
    except Exception:
        list_ids = [delivery_row["list_id"]] if delivery_row["list_id"] else []
    changed_any = False
    for list_id in list_ids:
        for _ in range(10):
            try:
                mailing_list = store.repository.get(list_id)
            except Exception:
                break
            if not isinstance(mailing_list, MailingList) or mailing_list.deleted or mailing_list.org_id != org_id:
                break
            try:
                changed = mailing_list.change_status(email, "unsubscribed", campaign_id=campaign_id,
                                                     reason="unsubscribe link")
            except DomainError:
                break
            if not changed:
                break
            cause = {"organization_id": org_id, "user_id": None, "token_id": None, "oauth_client_id": None,
                     "correlation_id": uuid4(), "tool": "newsletter_unsubscribe"}
            try:
                store.save(mailing_list, cause=cause)
                changed_any = True
                break
            except IntegrityError:
                continue
    return changed_any
