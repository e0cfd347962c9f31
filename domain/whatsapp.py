"""WhatsApp chats: one chat per customer number and business number, its messages, and who may see it.

- `Chat`: the conversation with one customer number (`wa_id`, digits of the E.164 number) on one business number
  (the Cloud API's `phone_number_id`). Its id comes from (organization, business number, customer number), so a
  webhook and a send find the same chat without looking it up. It records the customer's profile name, the CRM
  client it is linked to (automatically when the number matches, or by hand), its assignee, archiving, and when
  it was read.
- `WhatsappMessage`: one message, inbound (id from the Cloud API's message id, so a delivery repeated by WhatsApp
  is stored once) or outbound (recorded `sending` before the Cloud API is called, then `accepted` with the Cloud
  API's id, `failed`, or `interrupted` when the process stopped between the call and its answer: never re-sent).
  Statuses reported by webhooks (sent, delivered, read, failed) may arrive out of order; the message keeps each
  one's time and shows the furthest (`display_status`).
- `WhatsappAccess`: per organization, which users may see which chats or business numbers (admins see all;
  a chat's assignee sees it).

Everything here is pure: the webhook's JSON is parsed (`parse_message`, `parse_status`) into plain values that are
always storable (no NUL, no unpaired surrogates, bounded sizes, timestamps in range).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.errors import Conflict, DomainError
from domain.shared import Assignable

CARE_WINDOW = timedelta(hours=24)
"""The customer-care window: free-form messages may be sent this long after the customer's last message."""
KINDS = ("text", "image", "audio", "video", "document", "sticker", "location", "contacts", "reaction", "interactive",
         "button", "order", "template", "system", "unsupported")
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
STATUSES = ("received", "sending", "accepted", "sent", "delivered", "read", "failed", "interrupted")
REPORTED = ("sent", "delivered", "read", "failed")
"""Statuses the Cloud API reports by webhook for outbound messages."""
RANK = {"sent": 1, "delivered": 2, "read": 3}
MAX_TEXT = 4096
"""The Cloud API's limit for a text message body; longer inbound texts are cut to it."""
MAX_PARAMETER = 1024
MAX_NAME = 256

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_DIGITS = re.compile(r"^[0-9]{6,20}$")
_PHONE = re.compile(r"^\s*(\+|00)?[0-9 ().\-/]{5,40}\s*$")
_NUMBER_ID = re.compile(r"^[0-9]{1,40}$")
MIN_TIME = datetime(1970, 1, 2, tzinfo=UTC)
MAX_TIME = datetime(2200, 12, 31, tzinfo=UTC)

CALLING_CODES = {
    "IT": "39", "SM": "378", "VA": "39", "CH": "41", "FR": "33", "DE": "49", "AT": "43", "ES": "34", "PT": "351",
    "GB": "44", "IE": "353", "BE": "32", "NL": "31", "LU": "352", "US": "1", "CA": "1", "MT": "356", "SI": "386",
    "HR": "385", "GR": "30", "PL": "48", "RO": "40", "BR": "55", "AR": "54", "MX": "52", "AL": "355",
}
TRUNK_ZERO_KEPT = {"39", "378"}
"""Numbering plans where the leading 0 of a national number is part of it (Italian landlines: 02 1234 -> +39 02 1234)."""


# -- identities -------------------------------------------------------------------------------------------------
def chat_id(org_id: UUID, phone_number_id: str, wa_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:whatsapp-chat:{phone_number_id}:{wa_id}")


def inbound_message_id(org_id: UUID, wamid: str) -> UUID:
    """An inbound message's id comes from WhatsApp's: the same message delivered twice is one aggregate."""
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:whatsapp-message:{wamid}")


def outbound_message_id(org_id: UUID, idempotency_key: str) -> UUID:
    """A send repeated with the same idempotency key is the same message (never sent twice)."""
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:whatsapp-send:{idempotency_key}")


def access_list_id(org_id: UUID) -> UUID:
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:whatsapp-access")


# -- numbers ----------------------------------------------------------------------------------------------------
def calling_code(locale: str | None, country: str | None = None) -> str:
    """The organization's country calling code, for numbers written without one: from the address's country
    (a two-letter code or an Italian/English name), else the locale's region, else Italy's."""
    names = {"italia": "IT", "italy": "IT", "svizzera": "CH", "switzerland": "CH", "san marino": "SM",
             "francia": "FR", "france": "FR", "germania": "DE", "germany": "DE", "spagna": "ES", "spain": "ES",
             "regno unito": "GB", "united kingdom": "GB", "austria": "AT"}
    for candidate in ((country or "").strip(), (locale or "").partition("-")[2]):
        code = names.get(candidate.lower(), candidate.upper())
        if code in CALLING_CODES:
            return CALLING_CODES[code]
    return "39"


def normalize_number(raw: str, default_code: str, *, field: str = "to") -> str:
    """A phone number as WhatsApp's `wa_id`: the digits of its E.164 form (country code, no +). Numbers without
    an international prefix get the organization's country code."""
    if not _PHONE.match(raw or ""):
        raise DomainError("a phone number has digits, optionally a leading + or 00, spaces, dots, dashes or "
                          "parentheses, e.g. '+39 333 123 4567'", field=field)
    text = raw.strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if text.startswith("+"):
        number = digits
    elif text.startswith("00"):
        number = digits[2:]
    else:
        national = digits if default_code in TRUNK_ZERO_KEPT else digits.lstrip("0")
        number = default_code + national
    if not 8 <= len(number) <= 15 or number.startswith("0"):
        raise DomainError("the phone number is not a valid international number (E.164 has 8 to 15 digits after "
                          "the +, the first being the country code)", field=field)
    return number


def e164(wa_id: str) -> str:
    return f"+{wa_id}"


def match_keys(wa_id: str, default_code: str) -> list[str]:
    """Every form in which a client's or contact's phone may be stored (as `phone_key`: digits without a leading
    00) and still be this WhatsApp number: international, or national when it is in the organization's country."""
    keys = [wa_id]
    if wa_id.startswith(default_code) and len(wa_id) > len(default_code) + 4:
        national = wa_id[len(default_code):]
        keys.append(national)
        if default_code not in TRUNK_ZERO_KEPT:
            keys.append("0" + national)
    return keys


# -- the customer-care window ---------------------------------------------------------------------------------------
def window_closes_at(last_inbound_at: datetime | None) -> datetime | None:
    return None if last_inbound_at is None else last_inbound_at + CARE_WINDOW


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    closes = window_closes_at(last_inbound_at)
    return closes is not None and now < closes


class OutsideCareWindow(DomainError):
    code = "outside_care_window"


def check_window(last_inbound_at: datetime | None, now: datetime) -> None:
    """Free-form messages only within 24 hours of the customer's last message (WhatsApp's rule)."""
    if window_open(last_inbound_at, now):
        return
    if last_inbound_at is None:
        why = "the customer has never written in this chat"
    else:
        why = (f"the customer last wrote at {last_inbound_at.astimezone(UTC).isoformat(timespec='minutes')}, more "
               "than 24 hours ago")
    raise OutsideCareWindow(f"a free-form message can only be sent within 24 hours of the customer's last message, "
                            f"and {why}: send an approved template with crm_whatsapp_send_template instead "
                            "(crm_whatsapp_list_templates lists them)", field="chat_id")


# -- template parameters -----------------------------------------------------------------------------------------
def check_parameters(values: list[str], expected: int, *, field: str = "parameters") -> list[str]:
    """Body parameters as the Cloud API accepts them: exactly one per variable, none empty, no new lines or tabs,
    at most four spaces in a row, at most 1,024 characters."""
    if len(values) != expected:
        raise DomainError(f"the template has {expected} variable(s) ({{{{1}}}}...) and {len(values)} value(s) were "
                          "given: give one value per variable, in order", field=field)
    for i, value in enumerate(values):
        where = f"{field}[{i}]"
        if not value.strip():
            raise DomainError(f"the value for {{{{{i + 1}}}}} is empty; WhatsApp refuses empty parameters", field=where)
        if "\n" in value or "\t" in value or "     " in value:
            raise DomainError(f"the value for {{{{{i + 1}}}}} has a new line, a tab or more than four spaces in a row, "
                              "which WhatsApp refuses in template parameters", field=where)
        if len(value) > MAX_PARAMETER:
            raise DomainError(f"the value for {{{{{i + 1}}}}} is longer than {MAX_PARAMETER} characters", field=where)
    return values


def variable_count(body: str | None) -> int:
    """How many numbered variables ({{1}}, {{2}}, ...) a template body has."""
    numbers = {int(n) for n in re.findall(r"\{\{\s*([1-9][0-9]{0,2})\s*\}\}", body or "")}
    return max(numbers, default=0)


def fill_body(body: str | None, values: list[str]) -> str | None:
    """The template's text as the customer reads it (for the chat history)."""
    if body is None:
        return None
    return re.sub(r"\{\{\s*([1-9][0-9]{0,2})\s*\}\}",
                  lambda m: values[int(m.group(1)) - 1] if int(m.group(1)) <= len(values) else m.group(0), body)


# -- parsing webhook deliveries (pure) -------------------------------------------------------------------------------
def clean(value: Any, limit: int = MAX_TEXT) -> str | None:
    """Webhook text made storable: strings only, NUL and unpaired surrogates replaced, cut to `limit`."""
    if not isinstance(value, str):
        return None
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub("\ufffd", value)
    return value[:limit]


def clean_id(value: Any, limit: int = 200) -> str | None:
    text = clean(value, limit)
    return text if text and text.isprintable() and " " not in text else None


def timestamp(value: Any, received_at: datetime) -> datetime:
    """WhatsApp's unix timestamp (a string of seconds); never after the delivery arrived, never out of range."""
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError
        at = datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return received_at
    return max(MIN_TIME, min(at, received_at, MAX_TIME))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and abs(number) <= 1e6 else None


def _media(part: Mapping[str, Any]) -> dict[str, Any]:
    out = {"media_id": clean_id(part.get("id")), "mime_type": clean(part.get("mime_type"), 127),
           "sha256": clean(part.get("sha256"), 100), "filename": clean(part.get("filename"), 255)}
    if part.get("voice") is True:
        out["voice"] = True
    if part.get("animated") is True:
        out["animated"] = True
    return {k: v for k, v in out.items() if v is not None}


def parse_message(message: Mapping[str, Any], received_at: datetime) -> dict[str, Any] | None:
    """One `messages[]` item of a webhook as what the CRM records: kind, text (body or caption), details (media
    reference, location, reaction, reply context, buttons), and WhatsApp's time. None without a usable id/sender."""
    wamid, sender = clean_id(message.get("id")), clean(message.get("from"), 40)
    if not wamid or not sender or not _DIGITS.match(sender):
        return None
    kind = message.get("type") if message.get("type") in KINDS else "unsupported"
    part = message.get(kind) if isinstance(message.get(kind), Mapping) else {}
    text: str | None = None
    details: dict[str, Any] = {}
    if kind == "text":
        text = clean(part.get("body"))
    elif kind in MEDIA_KINDS:
        text = clean(part.get("caption"))
        details["media"] = _media(part)
    elif kind == "location":
        location = {"latitude": _number(part.get("latitude")), "longitude": _number(part.get("longitude")),
                    "name": clean(part.get("name"), 500), "address": clean(part.get("address"), 1000),
                    "url": clean(part.get("url"), 2000)}
        details["location"] = {k: v for k, v in location.items() if v is not None}
        text = " ".join(v for v in (location["name"], location["address"]) if v) or None
    elif kind == "reaction":
        details["reaction"] = {k: v for k, v in {"emoji": clean(part.get("emoji"), 50),
                                                 "whatsapp_message_id": clean_id(part.get("message_id"))}.items() if v}
        text = details["reaction"].get("emoji")
    elif kind == "interactive":
        reply = part.get("button_reply") or part.get("list_reply") or {}
        if isinstance(reply, Mapping):
            text = clean(reply.get("title"), 1000)
            details["reply"] = {k: v for k, v in {"id": clean(reply.get("id"), 256),
                                                  "description": clean(reply.get("description"), 1000)}.items() if v}
    elif kind == "button":
        text = clean(part.get("text"), 1000)
        details["reply"] = {k: v for k, v in {"payload": clean(part.get("payload"), 1000)}.items() if v}
    elif kind == "contacts":
        contacts = message.get("contacts") if isinstance(message.get("contacts"), list) else []
        names = [clean((c.get("name") or {}).get("formatted_name"), 200) for c in contacts[:20]
                 if isinstance(c, Mapping) and isinstance(c.get("name"), Mapping)]
        phones = [clean(p.get("phone"), 40) for c in contacts[:20] if isinstance(c, Mapping)
                  for p in (c.get("phones") if isinstance(c.get("phones"), list) else [])[:5] if isinstance(p, Mapping)]
        details["contacts"] = {"names": [n for n in names if n], "phones": [p for p in phones if p]}
        text = ", ".join(details["contacts"]["names"]) or None
    elif kind == "system":
        text = clean(part.get("body"), 1000)
    elif kind == "order":
        text = clean(part.get("text"), 1000)
    context = message.get("context") if isinstance(message.get("context"), Mapping) else {}
    if clean_id(context.get("id")):
        details["reply_to"] = clean_id(context.get("id"))
    return {"wamid": wamid, "from": sender, "kind": kind, "text": text, "details": details,
            "at": timestamp(message.get("timestamp"), received_at)}


def parse_status(status: Mapping[str, Any], received_at: datetime) -> dict[str, Any] | None:
    """One `statuses[]` item: which message (WhatsApp's id and our callback data), the status, when, and the
    error WhatsApp gives for a failure."""
    wamid, value = clean_id(status.get("id")), status.get("status")
    if not wamid or value not in REPORTED:
        return None
    errors = status.get("errors") if isinstance(status.get("errors"), list) else []
    first = errors[0] if errors and isinstance(errors[0], Mapping) else {}
    code = first.get("code") if isinstance(first.get("code"), int) and 0 <= first.get("code") < 2**31 else None
    return {"wamid": wamid, "status": value, "at": timestamp(status.get("timestamp"), received_at),
            "recipient": clean(status.get("recipient_id"), 40), "callback": clean_id(status.get("biz_opaque_callback_data"), 512),
            "error_code": code, "error_title": clean(first.get("title") or first.get("message"), 500)}


def preview(kind: str, text: str | None) -> str:
    """What a chat list shows of a message."""
    if text:
        return text[:200]
    return f"[{kind}]"


def display_status(direction: str, reported: Mapping[str, Any], *, accepted: bool, failed: bool,
                   interrupted: bool, sending: bool = False) -> str:
    """The furthest status a message reached, whatever order the reports came in: read > delivered > sent >
    accepted; a failure shows unless the message was delivered or read after all."""
    if direction == "in":
        return "received"
    best = max((s for s in reported if s in RANK), key=RANK.__getitem__, default=None)
    if best in ("delivered", "read"):
        return best
    if failed or "failed" in reported:
        return "failed"
    if best == "sent":
        return best
    if accepted:
        return "accepted"
    if sending:
        return "sending"
    if interrupted:
        return "interrupted"
    return "sending"


# -- aggregates ---------------------------------------------------------------------------------------------------
class AlreadyArchived(Conflict):
    code = "already_archived"


class Chat(Assignable):
    entity_name = "chat"
    assignee_field = "assignee_id"

    @event("Opened")
    def __init__(self, id: UUID, org_id: UUID, phone_number_id: str, display_number: str | None, wa_id: str,
                 contact_name: str | None, client_id: UUID | None, opened_by: UUID | None) -> None:
        self.org_id = org_id
        self.phone_number_id = phone_number_id
        self.display_number = display_number
        self.wa_id = wa_id
        self.contact_name = contact_name
        self.client_id = client_id
        self.client_link = "automatic" if client_id is not None else None
        self.opened_by = opened_by
        self.assignee_id: UUID | None = None
        self.archived = False
        self.deleted = False

    @classmethod
    def open(cls, org_id: UUID, phone_number_id: str, wa_id: str, *, display_number: str | None = None,
             contact_name: str | None = None, client_id: UUID | None = None, opened_by: UUID | None = None) -> Chat:
        if not _NUMBER_ID.match(phone_number_id) or not _DIGITS.match(wa_id):
            raise DomainError("a chat needs a business phone number id and a customer number (digits)", field="to")
        return cls(id=chat_id(org_id, phone_number_id, wa_id), org_id=org_id, phone_number_id=phone_number_id,
                   display_number=display_number, wa_id=wa_id, contact_name=contact_name, client_id=client_id,
                   opened_by=opened_by)

    def rename_contact(self, name: str | None) -> None:
        if name and name != self.contact_name:
            self._contact_renamed(name=name[:MAX_NAME])

    @event("ContactRenamed")
    def _contact_renamed(self, name: str) -> None:
        self.contact_name = name

    def link_client(self, client_id: UUID | None, *, automatic: bool = False) -> None:
        """Link (or with None unlink) a client. A person's choice is `manual` and automatic matching by number
        never changes it afterwards; an automatic link is made only on a chat nobody linked by hand."""
        if automatic and self.client_link == "manual":
            return
        link = "automatic" if automatic else "manual"
        if client_id == self.client_id and link == self.client_link:
            return
        self._client_linked(client_id=client_id, automatic=automatic)

    @event("ClientLinked")
    def _client_linked(self, client_id: UUID | None, automatic: bool) -> None:
        self.client_id = client_id
        self.client_link = "automatic" if automatic else "manual"

    def archive(self) -> None:
        if self.archived:
            raise AlreadyArchived("the chat is already archived (a new message from the customer brings it back)",
                                  field="chat_id")
        self._archived()

    @event("Archived")
    def _archived(self) -> None:
        self.archived = True

    def unarchive(self) -> None:
        if self.archived:
            self._unarchived()

    @event("Unarchived")
    def _unarchived(self) -> None:
        self.archived = False

    def mark_read(self, by: UUID | None) -> None:
        self._read(by=by)

    @event("Read")
    def _read(self, by: UUID | None) -> None:
        pass


class MessageNotUsable(DomainError):
    pass


class WhatsappMessage(TenantAggregate):
    entity_name = "message"

    @event("Recorded")
    def __init__(self, id: UUID, org_id: UUID, chat_id: UUID, direction: str, wamid: str | None, kind: str,
                 text: str | None, details: dict[str, Any], at: datetime, sent_by: UUID | None) -> None:
        self.org_id = org_id
        self.chat_id = chat_id
        self.direction = direction
        self.wamid = wamid
        self.kind = kind
        self.text = text
        self.details = details
        self.at = at
        self.sent_by = sent_by
        self.reported: dict[str, Any] = {}
        self.accepted = False
        self.failed = False
        self.retryable = False
        self.interrupted = False
        self.sending = direction == "out"
        self.deleted = False

    @classmethod
    def received(cls, org_id: UUID, chat: UUID, parsed: Mapping[str, Any]) -> WhatsappMessage:
        return cls(id=inbound_message_id(org_id, parsed["wamid"]), org_id=org_id, chat_id=chat, direction="in",
                   wamid=parsed["wamid"], kind=parsed["kind"], text=parsed["text"], details=dict(parsed["details"]),
                   at=parsed["at"], sent_by=None)

    @classmethod
    def outbound(cls, message_id: UUID, org_id: UUID, chat: UUID, kind: str, text: str | None,
                 details: dict[str, Any], at: datetime, sent_by: UUID | None) -> WhatsappMessage:
        if kind not in ("text", "template"):
            raise DomainError("only text and template messages are sent", field="kind")
        return cls(id=message_id, org_id=org_id, chat_id=chat, direction="out", wamid=None, kind=kind, text=text,
                   details=details, at=at, sent_by=sent_by)

    @property
    def status(self) -> str:
        return display_status(self.direction, self.reported, accepted=self.accepted, failed=self.failed,
                              interrupted=self.interrupted, sending=self.sending)

    # -- the send's own outcome -----------------------------------------------------------------------------------
    def accept(self, wamid: str) -> None:
        """The Cloud API took the message and answered its id."""
        if self.direction != "out":
            raise MessageNotUsable("only outbound messages are sent", field="message_id")
        if not self.accepted:
            self._accepted(wamid=wamid)

    @event("Accepted")
    def _accepted(self, wamid: str) -> None:
        self.accepted = True
        self.sending = self.interrupted = self.failed = self.retryable = False
        self.wamid = wamid

    def fail(self, code: int | None, title: str, *, retryable: bool) -> None:
        """The Cloud API refused the message (nothing was sent); a retryable refusal (rate limit) may be sent again."""
        self._send_failed(code=code, title=title[:500], retryable=retryable)

    @event("SendFailed")
    def _send_failed(self, code: int | None, title: str, retryable: bool) -> None:
        self.failed = True
        self.retryable = retryable
        self.sending = False

    def retry(self) -> None:
        if not (self.failed and self.retryable):
            raise MessageNotUsable("only a message refused for a passing reason (rate limit) is sent again",
                                   field="idempotency_key")
        self._retried()

    @event("Retried")
    def _retried(self) -> None:
        self.failed = self.retryable = False
        self.sending = True

    def interrupt(self) -> None:
        """The process stopped between the Cloud API call and its answer: the outcome is unknown and it is never
        sent again (a later status webhook tells what happened)."""
        if self.sending and not self.accepted:
            self._interrupted()

    @event("Interrupted")
    def _interrupted(self) -> None:
        self.interrupted = True
        self.sending = False

    # -- webhook reports ------------------------------------------------------------------------------------------
    def report(self, status: str, at: datetime, wamid: str | None = None, error_code: int | None = None,
               error_title: str | None = None) -> bool:
        """A status from a webhook; a status already known changes nothing. Returns whether it was recorded."""
        if self.direction != "out" or status not in REPORTED or status in self.reported:
            return False
        self._status_reported(status=status, at=at, wamid=wamid if not self.wamid else None, error_code=error_code,
                              error_title=error_title)
        return True

    @event("StatusReported")
    def _status_reported(self, status: str, at: datetime, wamid: str | None, error_code: int | None,
                         error_title: str | None) -> None:
        self.reported = {**self.reported, status: at}
        if wamid and not self.wamid:
            self.wamid = wamid
        self.sending = False


class AccessNotGranted(DomainError):
    code = "not_found"


class WhatsappAccess(TenantAggregate):
    """Who may see which chats (chat_id) or every chat of a business number (phone_number_id), per organization."""

    entity_name = "whatsapp access list"

    @event("Started")
    def __init__(self, id: UUID, org_id: UUID) -> None:
        self.org_id = org_id
        self.grants: list[list[str]] = []
        self.deleted = False

    @classmethod
    def start(cls, org_id: UUID) -> WhatsappAccess:
        return cls(id=access_list_id(org_id), org_id=org_id)

    @staticmethod
    def _key(user_id: UUID, chat: UUID | None, phone_number_id: str | None) -> list[str]:
        return [str(user_id), str(chat) if chat else "", phone_number_id or ""]

    def has(self, user_id: UUID, chat: UUID | None, phone_number_id: str | None) -> bool:
        return self._key(user_id, chat, phone_number_id) in self.grants

    def grant(self, user_id: UUID, *, chat: UUID | None = None, phone_number_id: str | None = None,
              by: UUID | None = None) -> bool:
        if (chat is None) == (phone_number_id is None):
            raise DomainError("give exactly one of chat_id or business_number_id", field="chat_id")
        if self.has(user_id, chat, phone_number_id):
            return False
        self._granted(org_id=self.org_id, user_id=user_id, chat_id=chat, phone_number_id=phone_number_id, by=by)
        return True

    @event("Granted")
    def _granted(self, org_id: UUID, user_id: UUID, chat_id: UUID | None, phone_number_id: str | None,
                 by: UUID | None) -> None:
        self.grants = [*self.grants, self._key(user_id, chat_id, phone_number_id)]

    def revoke(self, user_id: UUID, *, chat: UUID | None = None, phone_number_id: str | None = None) -> None:
        if (chat is None) == (phone_number_id is None):
            raise DomainError("give exactly one of chat_id or business_number_id", field="chat_id")
        if not self.has(user_id, chat, phone_number_id):
            what = "to this chat" if chat else "to this business number"
            raise AccessNotGranted(f"the user has no access {what} to take away (crm_whatsapp_get_acl lists who has "
                                   "which)", field="chat_id" if chat else "business_number_id")
        self._revoked(org_id=self.org_id, user_id=user_id, chat_id=chat, phone_number_id=phone_number_id)

    @event("Revoked")
    def _revoked(self, org_id: UUID, user_id: UUID, chat_id: UUID | None, phone_number_id: str | None) -> None:
        key = self._key(user_id, chat_id, phone_number_id)
        self.grants = [g for g in self.grants if g != key]
