"""Newsletter: mailing lists and their subscribers, campaigns, opens and clicks, the blacklist, sender domains.

A mailing list holds its subscribers (one per address, lower-cased): subscribed, unsubscribed, bounced or
complained, each with where its consent came from and when, and linked to the CRM client/contact it was added
from. A campaign is a draft (subject, sender, HTML and text bodies whose placeholders are checked when saved)
that is scheduled or sent to its lists, then sending, then sent; a scheduled or sending campaign can be
cancelled. Opens and clicks are events of their own (`Engagement`, one per hit) so that a campaign's history
does not grow with its audience. Sender domains carry the DKIM selector and public key to publish; the private
key never enters an event. Nothing here performs I/O: DNS answers are given to `check_dns` by the caller.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.errors import Conflict, DomainError, NotFound
from domain.shared import Editable

SUBSCRIBER_STATUSES = ("subscribed", "unsubscribed", "bounced", "complained")
CAMPAIGN_STATUSES = ("draft", "scheduled", "sending", "sent", "cancelled")
CONSENT_SOURCES = ("form", "import", "crm", "event", "purchase", "other")
CAMPAIGN_FIELDS = ("name", "subject", "from_name", "from_email", "reply_to", "html_body", "text_body", "list_ids")
LIST_FIELDS = ("name", "description")
MAX_SUBSCRIBERS_PER_CALL = 1000
MAX_TEST_ADDRESSES = 5

PLACEHOLDERS = {
    "subscriber.email": "the recipient's address",
    "subscriber.first_name": "the subscriber's first name (empty when unknown)",
    "subscriber.last_name": "the subscriber's last name (empty when unknown)",
    "client.business_name": "the business name of the CRM client the subscriber is linked to (empty otherwise)",
    "campaign.subject": "the campaign's subject",
    "unsubscribe_url": "the recipient's personal unsubscribe link (added at the bottom when the body has none)",
}
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_HREF = re.compile(r"""href\s*=\s*(["'])(https?://[^"'\s<>]+)\1""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"'{}]+")
_DOMAIN = re.compile(r"^(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@([^@\s]+)$")


# -- values ----------------------------------------------------------------------------------------------------
def normalize_email(address: str, *, field: str = "email") -> str:
    address = address.strip().lower()
    m = _EMAIL.match(address)
    if not m or not _DOMAIN.match(m.group(1)):
        raise DomainError(f"{address!r} is not an e-mail address", field=field)
    return address


def normalize_domain(domain: str, *, field: str = "domain") -> str:
    domain = domain.strip().lower().rstrip(".")
    if not _DOMAIN.match(domain):
        raise DomainError(f"{domain!r} is not a domain name like example.com", field=field)
    return domain


def email_domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def blacklist_value(value: str) -> tuple[str, str]:
    """(normalized value, 'address' or 'domain'): an address has an @; a domain (or '@example.com') has none."""
    value = value.strip().lower()
    if value.startswith("@"):
        value = value[1:]
    if "@" in value:
        return normalize_email(value, field="value"), "address"
    return normalize_domain(value, field="value"), "domain"


def is_blacklisted(address: str, entries: set[str]) -> bool:
    """Whether the address, its domain or a parent domain of it is in `entries` (normalized values)."""
    if address in entries:
        return True
    labels = email_domain(address).split(".")
    return any(".".join(labels[i:]) in entries for i in range(len(labels) - 1))


# -- placeholders and links -------------------------------------------------------------------------------------
def check_placeholders(text: str | None, field: str) -> None:
    """Every `{{ ... }}` must be a known placeholder; the error names the unknown one and lists the known."""
    for m in _PLACEHOLDER.finditer(text or ""):
        if m.group(1) not in PLACEHOLDERS:
            raise DomainError(f"unknown placeholder {m.group(0)!r} in {field}; known: "
                              + ", ".join("{{" + p + "}}" for p in PLACEHOLDERS), field=field)


def render(text: str, values: dict[str, str], *, escape: Any = None) -> str:
    """Fill the placeholders (checked when the campaign was saved); `escape` applies to values (HTML)."""
    def fill(m: re.Match[str]) -> str:
        value = values.get(m.group(1), "")
        return escape(value) if escape else value

    return _PLACEHOLDER.sub(fill, text)


def campaign_links(html_body: str | None, text_body: str | None) -> list[str]:
    """The http(s) links of a campaign, in order of first appearance: the only targets its click redirect serves."""
    found = [m.group(2) for m in _HREF.finditer(html_body or "")] + _TEXT_URL.findall(text_body or "")
    return list(dict.fromkeys(u for u in found if len(u) <= 2000 and urlsplit(u).hostname))


def html_links(html_body: str) -> list[tuple[int, int, str]]:
    """(start, end, url) of every href value in the HTML body, for rewriting them to tracked links."""
    return [(m.start(2), m.end(2), m.group(2)) for m in _HREF.finditer(html_body)]


# -- mailing lists -------------------------------------------------------------------------------------------------
class SubscriberNotFound(NotFound):
    def __init__(self, email: str) -> None:
        super().__init__("subscriber", repr(email), field="email")


class MailingList(Editable):
    entity_name = "mailing list"
    editable_fields = frozenset(LIST_FIELDS)

    @event("Created")
    def __init__(self, org_id: UUID, name: str, description: str | None, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.name = name
        self.description = description
        self.created_by = created_by
        self.subscribers: dict[str, dict[str, Any]] = {}
        self.deleted = False

    def check_changes(self, changes: dict[str, Any]) -> None:
        if "name" in changes and not (changes["name"] or "").strip():
            raise DomainError("name cannot be empty", field="name")

    def add_subscribers(self, candidates: list[dict[str, Any]], *, consent_source: str, consent_at: datetime
                        ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Add new addresses (normalized); existing ones are skipped with their status, never resubscribed.
        Returns (added, skipped) where skipped items say why."""
        if consent_source not in CONSENT_SOURCES:
            raise DomainError(f"consent_source must be one of {', '.join(CONSENT_SOURCES)}", field="consent_source")
        if len(self.subscribers) + len(candidates) > 1_000_000:
            raise DomainError("a list holds at most 1,000,000 subscribers", field="emails")
        added: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        seen: set[str] = set()
        for c in candidates:
            email = normalize_email(c["email"], field="emails")
            if email in seen:
                continue
            seen.add(email)
            existing = self.subscribers.get(email)
            if existing is not None:
                skipped.append({"email": email, "reason": f"already on the list ({existing['status']})"})
                continue
            added.append({"id": str(uuid4()), "email": email, "first_name": c.get("first_name"),
                          "last_name": c.get("last_name"), "client_id": _str(c.get("client_id")),
                          "contact_id": _str(c.get("contact_id")), "consent_source": consent_source,
                          "consent_at": consent_at.isoformat()})
        if added:
            self._added(subscribers=added)
        return added, skipped

    @event("SubscribersAdded")
    def _added(self, subscribers: list[dict[str, Any]]) -> None:
        self.subscribers = {**self.subscribers,
                            **{s["email"]: {"id": s["id"], "status": "subscribed"} for s in subscribers}}

    def subscriber(self, email: str) -> dict[str, Any]:
        found = self.subscribers.get(email.strip().lower())
        if found is None:
            raise SubscriberNotFound(email)
        return found

    def remove_subscriber(self, email: str) -> str:
        found = self.subscriber(email)
        self._removed(email=email.strip().lower())
        return found["id"]

    @event("SubscriberRemoved")
    def _removed(self, email: str) -> None:
        self.subscribers = {k: v for k, v in self.subscribers.items() if k != email}

    def change_status(self, email: str, status: str, *, campaign_id: UUID | None = None,
                      reason: str | None = None) -> bool:
        """Unsubscribe, bounce or complain an address (no event when it already has that status). An address
        that left the list (unsubscribed, bounced, complained) is never resubscribed here."""
        if status not in SUBSCRIBER_STATUSES or status == "subscribed":
            raise DomainError("status must be unsubscribed, bounced or complained", field="status")
        found = self.subscriber(email)
        if found["status"] == status or (found["status"] != "subscribed" and status == "unsubscribed"):
            return False
        self._status_changed(email=email.strip().lower(), status=status, campaign_id=campaign_id, reason=reason)
        return True

    @event("SubscriberStatusChanged")
    def _status_changed(self, email: str, status: str, campaign_id: UUID | None, reason: str | None) -> None:
        self.subscribers = {**self.subscribers, email: {**self.subscribers[email], "status": status}}


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# -- campaigns -----------------------------------------------------------------------------------------------------
class NotEditable(Conflict):
    code = "campaign_not_editable"


class WrongStatus(Conflict):
    code = "wrong_campaign_status"


class Campaign(Editable):
    entity_name = "campaign"
    editable_fields = frozenset(CAMPAIGN_FIELDS)

    @event("Created")
    def __init__(self, org_id: UUID, fields: dict[str, Any], created_by: UUID | None) -> None:
        self.org_id = org_id
        self.name = self.subject = self.from_name = self.from_email = ""
        self.reply_to = self.html_body = self.text_body = None
        self.list_ids: list[str] = []
        for key, value in fields.items():
            if key not in self.editable_fields:
                raise DomainError(f"cannot set {key}", field=key)
            setattr(self, key, value)
        self.created_by = created_by
        self.status = "draft"
        self.scheduled_at: datetime | None = None
        self.recipients = 0
        self.deleted = False

    @classmethod
    def draft(cls, org_id: UUID, fields: dict[str, Any], created_by: UUID | None) -> Campaign:
        check_campaign(fields)
        if not (fields.get("html_body") or fields.get("text_body")):
            raise DomainError("a campaign needs html_body or text_body (or both)", field="html_body")
        return cls(org_id=org_id, fields=fields, created_by=created_by)

    @property
    def links(self) -> list[str]:
        return campaign_links(self.html_body, self.text_body)

    def check_changes(self, changes: dict[str, Any]) -> None:
        if self.status != "draft":
            raise NotEditable(f"the campaign is {self.status}; only a draft can be changed", field="campaign_id")
        check_campaign(changes)
        after = {k: changes.get(k, getattr(self, k)) for k in ("html_body", "text_body")}
        if not (after["html_body"] or after["text_body"]):
            raise DomainError("a campaign needs html_body or text_body (or both)", field="html_body")

    def _require(self, allowed: tuple[str, ...], doing: str) -> None:
        if self.status not in allowed:
            raise WrongStatus(f"the campaign is {self.status}; only a {' or '.join(allowed)} campaign can be {doing}",
                              field="campaign_id")

    def record_test(self, addresses: list[str]) -> None:
        self._tested(addresses=addresses)

    @event("TestSent")
    def _tested(self, addresses: list[str]) -> None:
        pass

    def schedule(self, at: datetime, now: datetime) -> None:
        self._require(("draft", "scheduled"), "scheduled")
        if at <= now:
            raise DomainError("scheduled_at must be in the future", field="scheduled_at")
        if not self.list_ids:
            raise DomainError("the campaign has no lists to send to", field="campaign_id")
        self._scheduled(at=at)

    @event("Scheduled")
    def _scheduled(self, at: datetime) -> None:
        self.status = "scheduled"
        self.scheduled_at = at

    def start_sending(self, recipients: int) -> None:
        self._require(("draft", "scheduled"), "sent")
        if not self.list_ids:
            raise DomainError("the campaign has no lists to send to", field="campaign_id")
        self._started(recipients=recipients)

    @event("SendingStarted")
    def _started(self, recipients: int) -> None:
        self.status = "sending"
        self.recipients = recipients

    def finish(self, sent: int, failed: int) -> None:
        self._require(("sending",), "finished")
        self._finished(sent=sent, failed=failed)

    @event("Finished")
    def _finished(self, sent: int, failed: int) -> None:
        self.status = "sent"

    def cancel(self, reason: str | None = None) -> None:
        self._require(("scheduled", "sending"), "cancelled")
        self._cancelled(reason=reason)

    @event("Cancelled")
    def _cancelled(self, reason: str | None) -> None:
        self.status = "cancelled"

    def delete(self) -> None:
        self._require(("draft", "cancelled"), "deleted")
        super().delete()


def check_campaign(fields: dict[str, Any]) -> None:
    """What a campaign's fields must be, on create and on every change."""
    for key in ("name", "subject", "from_name"):
        if key in fields and not (fields[key] or "").strip():
            raise DomainError(f"{key} cannot be empty", field=key)
    if "from_email" in fields:
        fields["from_email"] = normalize_email(fields["from_email"], field="from_email")
    if fields.get("reply_to"):
        fields["reply_to"] = normalize_email(fields["reply_to"], field="reply_to")
    for key in ("subject", "html_body", "text_body"):
        if key in fields:
            check_placeholders(fields[key], key)
    if "subject" in fields and "unsubscribe_url" in (fields["subject"] or ""):
        raise DomainError("{{unsubscribe_url}} belongs in the body, not the subject", field="subject")
    if "subject" in fields and ("\n" in fields["subject"] or "\r" in fields["subject"]):
        raise DomainError("subject must be one line", field="subject")
    if "from_name" in fields and any(c in fields["from_name"] for c in "\r\n"):
        raise DomainError("from_name must be one line", field="from_name")
    if "list_ids" in fields:
        fields["list_ids"] = list(dict.fromkeys(str(i) for i in fields["list_ids"]))


# -- opens and clicks ---------------------------------------------------------------------------------------------
class Engagement(TenantAggregate):
    """One open or click of one delivered message (recorded by the tracking endpoints)."""

    entity_name = "engagement"

    @event("Recorded")
    def __init__(self, org_id: UUID, campaign_id: UUID, delivery_id: UUID, kind: str, url: str | None) -> None:
        if kind not in ("open", "click"):
            raise DomainError("kind must be open or click", field="kind")
        self.org_id = org_id
        self.campaign_id = campaign_id
        self.delivery_id = delivery_id
        self.kind = kind
        self.url = url
        self.deleted = False


# -- blacklist ----------------------------------------------------------------------------------------------------
class BlacklistEntry(TenantAggregate):
    entity_name = "blacklist entry"

    @event("Created")
    def __init__(self, org_id: UUID, value: str, kind: str, reason: str | None, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.value = value
        self.kind = kind
        self.reason = reason
        self.created_by = created_by
        self.deleted = False


# -- sender domains -----------------------------------------------------------------------------------------------
class SenderDomain(TenantAggregate):
    entity_name = "sender domain"

    @event("Created")
    def __init__(self, org_id: UUID, domain: str, selector: str, public_key: str, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.domain = domain
        self.selector = selector
        self.public_key = public_key
        self.created_by = created_by
        self.verified = False
        self.deleted = False

    def record_check(self, result: DnsCheck) -> None:
        self._checked(spf_ok=result.spf_ok, dkim_ok=result.dkim_ok, dmarc_ok=result.dmarc_ok, problems=result.problems)

    @event("Checked")
    def _checked(self, spf_ok: bool, dkim_ok: bool, dmarc_ok: bool, problems: list[str]) -> None:
        self.verified = spf_ok and dkim_ok and dmarc_ok


class DnsCheck:
    """What the published TXT records say, record by record: each problem names the record and what to fix."""

    def __init__(self, spf_ok: bool, dkim_ok: bool, dmarc_ok: bool, problems: list[str]) -> None:
        self.spf_ok, self.dkim_ok, self.dmarc_ok, self.problems = spf_ok, dkim_ok, dmarc_ok, problems

    @property
    def verified(self) -> bool:
        return self.spf_ok and self.dkim_ok and self.dmarc_ok


def dns_records(domain: str, selector: str, public_key: str, spf_mechanism: str) -> list[dict[str, str]]:
    """The TXT records to publish for a sender domain."""
    return [
        {"purpose": "SPF", "type": "TXT", "name": domain, "value": f"v=spf1 {spf_mechanism} ~all"},
        {"purpose": "DKIM", "type": "TXT", "name": f"{selector}._domainkey.{domain}",
         "value": f"v=DKIM1; k=rsa; p={public_key}"},
        {"purpose": "DMARC", "type": "TXT", "name": f"_dmarc.{domain}",
         "value": f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"},
    ]


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def check_dns(domain: str, selector: str, public_key: str, spf_mechanism: str,
              txt: dict[str, list[str] | None]) -> DnsCheck:
    """Check the TXT answers (`txt[name]`: the strings found, [] when none, None when the lookup failed)."""
    problems: list[str] = []

    failed: set[str] = set()

    def answers(name: str, what: str) -> list[str]:
        found = txt.get(name)
        if found is None:
            problems.append(f"{what}: the DNS lookup of {name} failed; try again later")
            failed.add(what)
            return []
        return found

    spf = [r for r in answers(domain, "SPF") if r.lower().startswith("v=spf1")]
    spf_ok = False
    if "SPF" in failed:
        pass
    elif not spf:
        problems.append(f"SPF: no 'v=spf1' TXT record at {domain}; publish 'v=spf1 {spf_mechanism} ~all'")
    elif len(spf) > 1:
        problems.append(f"SPF: {domain} has {len(spf)} SPF records; merge them into one that includes {spf_mechanism}")
    elif spf_mechanism.lower() not in spf[0].lower().split():
        problems.append(f"SPF: the record at {domain} does not include {spf_mechanism}; add it before the 'all' term")
    else:
        spf_ok = True
    dkim_name = f"{selector}._domainkey.{domain}"
    dkim = [_tags(r) for r in answers(dkim_name, "DKIM") if "p=" in r]
    dkim_ok = False
    if "DKIM" in failed:
        pass
    elif not dkim:
        problems.append(f"DKIM: no TXT record with the public key at {dkim_name}")
    elif not any(t.get("p") == public_key for t in dkim):
        problems.append(f"DKIM: the key published at {dkim_name} is not the one given by crm_newsletter_add_domain")
    else:
        dkim_ok = True
    dmarc_name = f"_dmarc.{domain}"
    dmarc = [_tags(r) for r in answers(dmarc_name, "DMARC") if r.replace(" ", "").upper().startswith("V=DMARC1")]
    dmarc_ok = False
    if "DMARC" in failed:
        pass
    elif not dmarc:
        problems.append(f"DMARC: no 'v=DMARC1' TXT record at {dmarc_name}")
    elif dmarc[0].get("p") not in ("none", "quarantine", "reject"):
        problems.append(f"DMARC: the record at {dmarc_name} has no valid policy (p=none, quarantine or reject)")
    else:
        dmarc_ok = True
    return DnsCheck(spf_ok, dkim_ok, dmarc_ok, problems)
