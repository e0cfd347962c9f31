"""WhatsApp: the `crm_whatsapp_*` tools (chats through the Cloud API, per-user access).

Who sees what: admins (the built-in admin role) see every chat; other users see the chats assigned to them, the
chats granted to them and every chat of a business number granted to them (`grant_access`). Every tool answers
"not found" for a chat the caller may not see, exactly as for one that does not exist, and lists and searches
leave such chats out. A grant or revocation counts from the next call (it is in the read model when it returns).

Sending (application/whatsapp_send.py): recorded before the Cloud API is called, completed after, never sent twice.
Free-form texts only within 24 hours of the customer's last message; templates any time. Webhook deliveries are
applied by application/whatsapp_inbox.py; the connection is set with crm_settings_update_organization (whatsapp).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application import attachments
from application import whatsapp_cloud as cloud
from application import whatsapp_send as sending
from application.public import public_base
from application.identity import ensure_user
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, NoteBody, Page, Query, Removed, SearchText
from application.toolset import NoteOut, Toolset, present_note
from domain import templates as template_rules
from domain.clients import Client
from domain.errors import DomainError, NotFound
from domain.notes import Note
from domain.whatsapp import (Chat, WhatsappAccess, access_list_id, calling_code, check_parameters, check_window,
                             chat_id as derive_chat_id, fill_body, normalize_number, variable_count, window_closes_at,
                             window_open)
from projections import notes as notes_q
from projections import settings as settings_q
from projections import whatsapp as wa_q

SUBJECT = "whatsapp_chat"
MEDIA_LINK_TTL = 15 * 60
ChatId = Annotated[UUID, Meta(description="From crm_whatsapp_list_chats or _search_chats.")]
NoteId = Annotated[UUID, Meta(description="From crm_whatsapp_list_notes.")]
UserId = Annotated[UUID, Meta(description="From crm_users_list.")]
NumberId = Annotated[str, Meta(pattern=r"^[0-9]{5,40}$", description=(
    "A business number's id (business_number_id of crm_whatsapp_list_chats)."))]
Phone = Annotated[str, Meta(max_length=40, pattern=r"^\s*(\+|00)?[0-9 ().\-/]{5,40}\s*$", description=(
    "The customer's phone number, e.g. '+39 333 123 4567' (without a country code: the organization's)."))]
Direction = Literal["in", "out"]
Status = Literal["received", "sending", "accepted", "sent", "delivered", "read", "failed", "interrupted"]


# == outputs ==================================================================================================
class ChatRow(Struct, kw_only=True, omit_defaults=True):
    """A chat in brief, as lists show it."""

    id: UUID
    phone: Annotated[str, Meta(description="The customer's number, E.164.")]
    contact_name: Annotated[str | None, Meta(description="The customer's WhatsApp profile name.")] = None
    client_id: UUID | None = None
    client_name: str | None = None
    assignee_id: UUID | None = None
    assignee_name: str | None = None
    unread_count: int = 0
    last_message_at: datetime | None = None
    last_message_preview: str | None = None
    last_message_direction: Direction | None = None
    archived: bool = False
    business_number_id: str
    business_number: str | None = None
    created_at: datetime


class ClientBrief(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    business_name: str
    contact_name: str | None = None
    email: str | None = None
    phone: str | None = None
    status: str | None = None


class ChatOut(ChatRow, kw_only=True, omit_defaults=True):
    client_link: Annotated[Literal["automatic", "manual"] | None, Meta(description=(
        "automatic: the number matched the client's (or a contact's) phone; manual: crm_whatsapp_link_client."))] = None
    client: Annotated[ClientBrief | None, Meta(description="The linked client (shown with clients:read).")] = None
    care_window_open: Annotated[bool, Meta(description=(
        "Whether crm_whatsapp_send_message may be used: within 24 h of the customer's last message."))]
    care_window_closes_at: datetime | None = None
    last_inbound_at: datetime | None = None
    last_read_at: datetime | None = None
    messages_count: int = 0
    archived_at: datetime | None = None
    updated_at: datetime


class MediaOut(Struct, kw_only=True, omit_defaults=True):
    media_id: str | None = None
    mime_type: str | None = None
    filename: str | None = None
    voice: bool | None = None
    download_url: Annotated[str | None, Meta(description="A signed link to the file, valid until download_expires_at.")] = None
    download_expires_at: datetime | None = None


class LocationOut(Struct, kw_only=True, omit_defaults=True):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None
    url: str | None = None


class TemplateSent(Struct, kw_only=True, omit_defaults=True):
    name: str
    language: str
    parameters: list[str] = []
    template_id: UUID | None = None


class ErrorOut(Struct, kw_only=True, omit_defaults=True):
    code: int | None = None
    title: str | None = None
    retryable: bool | None = None


class MessageOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    chat_id: UUID
    direction: Direction
    kind: str
    text: Annotated[str | None, Meta(description="The text, caption, place, reaction emoji or template as sent.")] = None
    status: Status
    at: Annotated[datetime, Meta(description="WhatsApp's time for received messages; when it was recorded for sent ones.")]
    whatsapp_message_id: str | None = None
    sent_by: UUID | None = None
    sent_by_name: str | None = None
    media: MediaOut | None = None
    location: LocationOut | None = None
    reaction_to: Annotated[str | None, Meta(description="The WhatsApp id of the message reacted to.")] = None
    reply_to: Annotated[str | None, Meta(description="The WhatsApp id of the message this one answers.")] = None
    button: Annotated[str | None, Meta(description="The id or payload of a button or list reply.")] = None
    contacts: list[str] = []
    template: TemplateSent | None = None
    error: ErrorOut | None = None
    accepted_at: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None
    note: str | None = None


class MessageHit(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    at: datetime
    direction: Direction
    kind: str
    text: str | None = None


class ChatHit(ChatRow, kw_only=True, omit_defaults=True):
    score: float
    matched_contact: Annotated[bool, Meta(description="The contact's name or number matched.")] = False
    matched_messages: int = 0
    messages: Annotated[list[MessageHit], Meta(description="The best matching messages (at most 3).")] = []


class ChatSearchResult(Struct, kw_only=True, omit_defaults=True):
    items: list[ChatHit]


class TemplateRow(Struct, kw_only=True, omit_defaults=True):
    source: Annotated[Literal["settings", "cloud_api"], Meta(description=(
        "settings: a template of crm_settings_*, sent by template_id; cloud_api: from WhatsApp's list, by name."))]
    name: str
    language: str | None = None
    category: str | None = None
    status: Annotated[str | None, Meta(description="WhatsApp's review status; only APPROVED ones can be sent.")] = None
    body: str | None = None
    variables: Annotated[int, Meta(description="How many values ({{1}}, {{2}}...) a send needs.")] = 0
    parameters: Annotated[list[str], Meta(description="Settings templates: the placeholder filling each variable.")] = []
    template_id: UUID | None = None


class TemplateList(Struct, kw_only=True, omit_defaults=True):
    items: list[TemplateRow]
    note: Annotated[str | None, Meta(description="Why a source is missing from the list.")] = None


class ReadOut(Struct, kw_only=True, omit_defaults=True):
    chat: ChatRow
    read_receipt_sent: Annotated[bool, Meta(description="Whether WhatsApp was told (blue ticks for the customer).")]
    read_receipt_note: str | None = None


class UserRef(Struct, kw_only=True, omit_defaults=True):
    user_id: UUID
    user_name: str | None = None


class AclEntry(Struct, kw_only=True, omit_defaults=True):
    user_id: UUID
    user_name: str | None = None
    via: Annotated[Literal["chat", "business_number", "assignee"], Meta(description=(
        "chat / business_number: granted; assignee: the chat is assigned to them."))]
    granted_by: UUID | None = None
    granted_by_name: str | None = None
    granted_at: datetime | None = None


class AclOut(Struct, kw_only=True, omit_defaults=True):
    chat_id: UUID | None = None
    business_number_id: str
    admins: Annotated[list[UserRef], Meta(description="Active admins: they see every chat.")]
    users: Annotated[list[AclEntry], Meta(description="Other users who may see it, and why.")]


# == who may see what ===========================================================================================
def _admin(conn: Any, principal: Any) -> bool:
    return wa_q.is_admin(conn, principal.organization_id, principal.user_id)


def visible_chat(conn: Any, principal: Any, chat: UUID) -> dict[str, Any]:
    """The chat's row when the caller may see it; "not found" otherwise, as for a chat that does not exist."""
    return wa_q.get_chat(conn, principal.organization_id, chat, admin=_admin(conn, principal), user_id=principal.user_id)


def _chat_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "phone": f"+{row['wa_id']}", "business_number_id": row["phone_number_id"],
            "business_number": row.get("display_number")}


def present_row(ctx: QueryContext, chat: UUID) -> ChatRow:
    """A changed chat, as the caller who changed it sees it (they may just have lost access to it)."""
    return msgspec.convert(_chat_row(wa_q.get_chat(ctx.conn, ctx.org_id, chat, admin=True, user_id=None)), ChatRow)


def _chat_out(ctx: QueryContext, row: dict[str, Any]) -> ChatOut:
    out = _chat_row(row)
    closes = window_closes_at(row["last_inbound_at"])
    out.update(care_window_open=window_open(row["last_inbound_at"], datetime.now(UTC)), care_window_closes_at=closes)
    if row["client_id"] is not None and ctx.principal.can("clients", "read"):
        client = ctx.conn.execute("SELECT id, business_name, contact_name, email, phone, status FROM clients"
                                  " WHERE organization_id = %s AND id = %s", (ctx.org_id, row["client_id"])).fetchone()
        out["client"] = client
    return msgspec.convert(out, ChatOut)


def present_chat(ctx: QueryContext, chat: UUID) -> ChatOut:
    return _chat_out(ctx, visible_chat(ctx.conn, ctx.principal, chat))


def _media_link(secret: bytes, message: UUID) -> tuple[str, int]:
    expires = int(time.time()) + MEDIA_LINK_TTL
    signature = attachments.signature(secret, f"whatsapp-media:{message}", expires)
    return f"{public_base()}/whatsapp/media/{message}?expires={expires}&sig={signature}", expires


def _message(row: dict[str, Any], secret: bytes | None = None) -> MessageOut:
    details = row.get("details") or {}
    out: dict[str, Any] = {k: row.get(k) for k in ("id", "chat_id", "direction", "kind", "status", "at", "sent_by",
                                                   "sent_by_name", "accepted_at", "sent_at", "delivered_at", "read_at",
                                                   "failed_at", "error")}
    out["text"] = row.get("body")
    out["whatsapp_message_id"] = row.get("wamid")
    media = details.get("media")
    if media:
        shown = {k: media.get(k) for k in ("media_id", "mime_type", "filename", "voice")}
        if secret is not None and media.get("media_id"):
            url, expires = _media_link(secret, row["id"])
            shown.update(download_url=url, download_expires_at=datetime.fromtimestamp(expires, UTC))
        out["media"] = shown
    if details.get("location"):
        out["location"] = details["location"]
    if details.get("reaction"):
        out["reaction_to"] = details["reaction"].get("whatsapp_message_id")
    out["reply_to"] = details.get("reply_to")
    reply = details.get("reply") or {}
    out["button"] = reply.get("id") or reply.get("payload")
    if details.get("contacts"):
        contacts = details["contacts"]
        out["contacts"] = [*contacts.get("names", []), *contacts.get("phones", [])]
    if details.get("template"):
        out["template"] = details["template"]
    if row.get("status") == "interrupted":
        out["note"] = sending.INTERRUPTED_NOTE
    return msgspec.convert({k: v for k, v in out.items() if v is not None}, MessageOut)


def _messages(ctx: QueryContext, rows: list[dict[str, Any]]) -> list[MessageOut]:
    secret = attachments.link_secret(ctx.conn) if any((r.get("details") or {}).get("media") for r in rows) else None
    return [_message(r, secret) for r in rows]


class SendRef(Struct, kw_only=True, omit_defaults=True):
    """What a send returns to the runner (and keeps with its idempotency key)."""

    message_id: UUID
    note: str | None = None


def present_sent(ctx: QueryContext, ref: SendRef) -> MessageOut:
    out = _messages(ctx, [wa_q.get_message(ctx.conn, ctx.org_id, ref.message_id)])[0]
    if ref.note and not out.note:
        out.note = ref.note
    return out


whatsapp = Toolset(
    "whatsapp", title="WhatsApp",
    description="WhatsApp chats through the Cloud API: per-user access, messages and search, texts within the 24-hour "
                "window, approved templates, assignment, client links, notes",
    aggregate=Chat, id_field="chat_id", id_type=ChatId, output=ChatOut, present=present_chat, row=ChatRow,
    present_row=present_row, exists=wa_q.chat_exists, subject="a chat",
)


def _load_chat(uow: UnitOfWork, chat: UUID) -> Chat:
    """The chat's aggregate, once the caller is known to see it."""
    visible_chat(uow.conn, uow.principal, chat)
    return uow.get(Chat, chat, field="chat_id")


# == reading ===================================================================================================
class ListChats(ListQuery, kw_only=True):
    """WhatsApp chats you may see, most recent message first, with unread counts and the last message. Admins see
    every chat; others see chats assigned or granted to them (crm_whatsapp_get_acl)."""

    assignee_id: Annotated[UUID | None, Meta(description="Only chats assigned to this user (crm_users_list).")] = None
    unassigned: bool = False
    client_id: Annotated[UUID | None, Meta(description="Only chats linked to this client.")] = None
    unread_only: bool = False
    archived: Annotated[bool, Meta(description="true: only archived chats (default: only the others).")] = False
    business_number_id: NumberId | None = None
    sort: Literal["recent", "created_desc", "created_asc"] = "recent"


@whatsapp.query("list_chats", output=Page[ChatRow])
def list_chats(q: ListChats, ctx: QueryContext) -> Page[ChatRow]:
    rows, cursor = wa_q.list_chats(
        ctx.conn, ctx.org_id, admin=_admin(ctx.conn, ctx.principal), user_id=ctx.principal.user_id,
        assignee_id=q.assignee_id, unassigned=q.unassigned, client_id=q.client_id, unread_only=q.unread_only,
        archived=q.archived, phone_number_id=q.business_number_id, sort=q.sort, limit=q.limit, cursor=q.cursor)
    return Page(items=[msgspec.convert(_chat_row(r), ChatRow) for r in rows], next_cursor=cursor)


class GetChat(Query, kw_only=True):
    """One chat: the customer's number and profile name, the linked client, assignee, unread count, and whether the
    24-hour window for free-form messages is open (else use crm_whatsapp_send_template)."""

    chat_id: ChatId


@whatsapp.query("get_chat", output=ChatOut)
def get_chat(q: GetChat, ctx: QueryContext) -> ChatOut:
    return present_chat(ctx, q.chat_id)


class SearchChats(Query, kw_only=True):
    """Search the chats you may see by contact name, phone number or message text (Italian and English word forms,
    word beginnings, accents ignored), best first, with the best matching messages; chat_id searches one chat."""

    q: SearchText
    chat_id: Annotated[UUID | None, Meta(description="Only this chat's messages.")] = None
    limit: Annotated[int, Meta(ge=1, le=50)] = 20


@whatsapp.query("search_chats", output=ChatSearchResult)
def search_chats(q: SearchChats, ctx: QueryContext) -> ChatSearchResult:
    admin = _admin(ctx.conn, ctx.principal)
    if q.chat_id is not None:
        visible_chat(ctx.conn, ctx.principal, q.chat_id)
    rows = wa_q.search(ctx.conn, ctx.org_id, q.q, admin=admin, user_id=ctx.principal.user_id, chat=q.chat_id,
                       limit=q.limit)
    items = [{**_chat_row(r), "matched_contact": r["by_contact"]} for r in rows]
    return ChatSearchResult(items=[msgspec.convert(i, ChatHit) for i in items])


class ListMessages(ListQuery, kw_only=True):
    """Messages of a chat, newest first: texts, media (with a signed download link), locations, reactions, templates
    sent, and each sent message's status (accepted, sent, delivered, read, failed)."""

    chat_id: ChatId


@whatsapp.query("list_messages", output=Page[MessageOut])
def list_messages(q: ListMessages, ctx: QueryContext) -> Page[MessageOut]:
    visible_chat(ctx.conn, ctx.principal, q.chat_id)
    rows, cursor = wa_q.list_messages(ctx.conn, ctx.org_id, q.chat_id, limit=q.limit, cursor=q.cursor)
    return Page(items=_messages(ctx, rows), next_cursor=cursor)


# == sending ===================================================================================================
def _connection_for(uow: UnitOfWork, chat_number: str | None = None) -> cloud.Connection:
    connection = cloud.require(uow.conn, uow.org_id)
    if chat_number is not None and chat_number != connection.phone_number_id:
        raise DomainError(f"this chat is on business number {chat_number}, and the organization is now connected to "
                          f"{connection.phone_number_id}: it cannot be answered from here", field="chat_id")
    return connection


class SendMessage(Command, kw_only=True):
    """Send a text in a chat. Only within 24 hours of the customer's last message (get_chat: care_window_open);
    otherwise use crm_whatsapp_send_template. Recorded before it is sent: never sent twice."""

    chat_id: ChatId
    text: Annotated[str, Meta(min_length=1, max_length=4096)]
    preview_url: Annotated[bool, Meta(description="Show a preview of the first link in the text.")] = False


@whatsapp.command("send_message", output=MessageOut, returns=SendRef, present=present_sent, open_world=True)
def send_message(cmd: SendMessage, uow: UnitOfWork) -> SendRef:
    if not cmd.text.strip():
        raise DomainError("the text is empty", field="text")
    row = visible_chat(uow.conn, uow.principal, cmd.chat_id)
    connection = _connection_for(uow, row["phone_number_id"])
    check_window(row["last_inbound_at"], datetime.now(UTC))
    chat = uow.get(Chat, cmd.chat_id, field="chat_id")
    outgoing = sending.Outgoing("text", cmd.text, {}, {"type": "text", "text": {"body": cmd.text,
                                                                              "preview_url": cmd.preview_url}})
    sent = sending.send(uow, "crm_whatsapp_send_message", chat, outgoing, connection, cmd.idempotency_key)
    return SendRef(message_id=sent.message_id, note=sent.note)


TemplateName = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$", description=(
    "A template's name (crm_whatsapp_list_templates)."))]
Language = Annotated[str, Meta(pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$", description="e.g. 'it' or 'en_US'.")]
Parameter = Annotated[str, Meta(min_length=1, max_length=1024)]


class SendTemplate(Command, kw_only=True):
    """Send an approved template, also outside the 24-hour window or to start a chat. Give chat_id or to, and
    template_id (settings) or template_name (+language). parameters fill {{1}}, {{2}}...; without them a settings
    template fills its placeholders from the chat's client (or client_id/deal_id)."""

    chat_id: Annotated[UUID | None, Meta(description="The chat (crm_whatsapp_list_chats); or give to.")] = None
    to: Annotated[Phone | None, Meta(description="A phone number; opens its chat if there is none yet.")] = None
    template_id: Annotated[UUID | None, Meta(description="A WhatsApp template of crm_settings_list_templates.")] = None
    template_name: TemplateName | None = None
    language: Language | None = None
    parameters: Annotated[list[Parameter], Meta(max_length=60, description="Values for {{1}}, {{2}}..., in order.")] | None = None
    client_id: Annotated[UUID | None, Meta(description="Fill placeholders from this client (default: the chat's).")] = None
    deal_id: Annotated[UUID | None, Meta(description="Fill placeholders from this deal (and its client).")] = None


def _resolve_chat(uow: UnitOfWork, cmd: SendTemplate, connection: cloud.Connection) -> Chat:
    from eventsourcing.application import AggregateNotFoundError

    if (cmd.chat_id is None) == (cmd.to is None):
        raise DomainError("give exactly one of chat_id or to", field="chat_id")
    if cmd.chat_id is not None:
        row = visible_chat(uow.conn, uow.principal, cmd.chat_id)
        _connection_for(uow, row["phone_number_id"])
        return uow.get(Chat, cmd.chat_id, field="chat_id")
    org = uow.conn.execute("SELECT locale, address FROM organizations WHERE id = %s", (uow.org_id,)).fetchone() or {}
    address = org.get("address") if isinstance(org.get("address"), dict) else {}
    wa_id = normalize_number(cmd.to, calling_code(org.get("locale"), address.get("country")), field="to")
    target = derive_chat_id(uow.org_id, connection.phone_number_id, wa_id)
    admin = _admin(uow.conn, uow.principal)
    if wa_q.chat_exists(uow.conn, uow.org_id, target):
        visible_chat(uow.conn, uow.principal, target)
        return uow.get(Chat, target, field="to")
    if not wa_q.can_see_number(uow.conn, uow.org_id, admin, uow.principal.user_id, connection.phone_number_id):
        raise DomainError("starting a chat needs access to the business number (an admin grants it with "
                          "crm_whatsapp_grant_access)", field="to")
    try:
        return uow.store.repository.get(target)
    except AggregateNotFoundError:
        return Chat.open(uow.org_id, connection.phone_number_id, wa_id, opened_by=uow.principal.user_id)


def _settings_template(uow: UnitOfWork, cmd: SendTemplate) -> dict[str, Any] | None:
    if cmd.template_id is not None:
        row = settings_q.get_template(uow.conn, uow.org_id, cmd.template_id)
        if row["kind"] != "whatsapp":
            raise DomainError(f"template {cmd.template_id} is a {row['kind']} template, not a WhatsApp one",
                              field="template_id")
        return row
    rows = uow.conn.execute(
        f"SELECT {settings_q.TEMPLATE_COLUMNS} FROM templates WHERE organization_id = %s AND kind = 'whatsapp'"
        " AND name = %s AND (%s::text IS NULL OR language = %s) ORDER BY language", (uow.org_id, cmd.template_name,
                                                                                   cmd.language, cmd.language)).fetchall()
    return rows[0] if len(rows) == 1 else None


def _cloud_template(connection: cloud.Connection, name: str, language: str | None) -> dict[str, Any]:
    try:
        found = [t for t in cloud.CloudApi(connection).templates(name=name) if t.get("name") == name]
    except cloud.CloudError as e:
        raise sending.Refused(f"the template list could not be read: {e.message}", field="template_name") from None
    if language is not None:
        found = [t for t in found if t.get("language") == language]
    if not found:
        raise DomainError(f"WhatsApp has no template named {name!r}{' in ' + language if language else ''} "
                          "(crm_whatsapp_list_templates lists them)", field="template_name")
    if len(found) > 1:
        raise DomainError(f"the template {name!r} exists in {', '.join(sorted(str(t.get('language')) for t in found))}:"
                          " say which with language", field="language")
    template = found[0]
    if str(template.get("status", "")).upper() != "APPROVED":
        raise DomainError(f"the template {name!r} is {template.get('status')}: only approved templates can be sent",
                          field="template_name")
    return template


def _values(uow: UnitOfWork, cmd: SendTemplate, placeholders: list[str], chat: Chat) -> list[str]:
    """The settings template's placeholders filled from the CRM (which reads those records: the token must be
    allowed to read them)."""
    roots = {p.split(".")[0] for p in placeholders}
    for root, resource in (("client", "clients"), ("deal", "deals")):
        if root in roots and not uow.principal.can(resource, "read"):
            raise DomainError(f"filling {{{{{next(p for p in placeholders if p.startswith(root + '.'))}}}}} reads the "
                              f"{root}: that needs {resource}:read; or give the values in parameters", field="parameters")
    client_id = cmd.client_id or (chat.client_id if cmd.deal_id is None else None)
    if "client" in roots and client_id is None and cmd.deal_id is None:
        raise DomainError("the template fills client placeholders and the chat is linked to no client: give client_id, "
                          "link the chat (crm_whatsapp_link_client) or give parameters", field="parameters")
    if "deal" in roots and cmd.deal_id is None:
        raise DomainError("the template fills deal placeholders: give deal_id or parameters", field="deal_id")
    values = sending.placeholder_values(uow.conn, uow.org_id, client_id=client_id, deal_id=cmd.deal_id,
                                        sender_id=uow.principal.user_id)
    filled = template_rules.whatsapp_parameters(placeholders, values)
    for i, (name, value) in enumerate(zip(placeholders, filled)):
        if not value.strip():
            raise DomainError(f"{{{{{i + 1}}}}} is filled by {{{{{name}}}}}, which is empty here: give parameters",
                              field="parameters")
    return [" ".join(v.split()) for v in filled]


@whatsapp.command("send_template", output=MessageOut, returns=SendRef, present=present_sent, open_world=True)
def send_template(cmd: SendTemplate, uow: UnitOfWork) -> SendRef:
    if (cmd.template_id is None) == (cmd.template_name is None):
        raise DomainError("give exactly one of template_id or template_name", field="template_id")
    connection = cloud.require(uow.conn, uow.org_id)
    chat = _resolve_chat(uow, cmd, connection)
    stored = _settings_template(uow, cmd)
    if stored is not None:
        name, language, body = stored["name"], stored["language"], stored["body"]
        placeholders = [p.strip().strip("{}").strip() for p in stored["parameters"] or []]
        count = len(placeholders) or variable_count(body)
    else:
        upstream = _cloud_template(connection, cmd.template_name or "", cmd.language)
        name, language, body, placeholders = upstream["name"], str(upstream.get("language")), cloud.template_body(upstream), []
        count = variable_count(body)
    if cmd.parameters is not None:
        values = check_parameters(list(cmd.parameters), count)
    elif count and placeholders:
        values = check_parameters(_values(uow, cmd, placeholders, chat), count)
    elif count:
        raise DomainError(f"the template has {count} variable(s): give their values in parameters", field="parameters")
    else:
        values = []
    part: dict[str, Any] = {"name": name, "language": {"code": language}}
    if values:
        part["components"] = [{"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}]
    details = {"template": {"name": name, "language": language, "parameters": values,
                            **({"template_id": str(stored["id"])} if stored is not None else {})}}
    outgoing = sending.Outgoing("template", fill_body(body, values) or f"[template {name}]", details,
                                {"type": "template", "template": part})
    sent = sending.send(uow, "crm_whatsapp_send_template", chat, outgoing, connection, cmd.idempotency_key)
    return SendRef(message_id=sent.message_id, note=sent.note)


class ListTemplates(Query, kw_only=True):
    """Templates you can send with crm_whatsapp_send_template: the organization's WhatsApp templates (settings, by
    template_id; shown with settings:read) and WhatsApp's approved list (by name)."""

    source: Literal["all", "settings", "cloud_api"] = "all"
    q: Annotated[str, Meta(min_length=1, max_length=200, description="Part of the name.")] | None = None
    language: Language | None = None
    include_unapproved: Annotated[bool, Meta(description="Also WhatsApp's pending, rejected and paused ones.")] = False


@whatsapp.query("list_templates", output=TemplateList, open_world=True)
def list_templates(q: ListTemplates, ctx: QueryContext) -> TemplateList:
    items: list[TemplateRow] = []
    notes: list[str] = []
    wanted = (q.q or "").lower()
    if q.source in ("all", "settings"):
        if ctx.principal.can("settings", "read"):
            rows = ctx.conn.execute(
                f"SELECT {settings_q.TEMPLATE_COLUMNS} FROM templates WHERE organization_id = %s AND kind = 'whatsapp'"
                " ORDER BY lower(name), language LIMIT 500", (ctx.org_id,)).fetchall()
            items += [TemplateRow(source="settings", name=r["name"], language=r["language"], category=r["category"],
                                  body=r["body"], variables=len(r["parameters"] or []) or variable_count(r["body"]),
                                  parameters=list(r["parameters"] or []), template_id=r["id"])
                      for r in rows if wanted in r["name"].lower() and (q.language is None or r["language"] == q.language)]
        else:
            notes.append("the organization's own templates need settings:read")
    if q.source in ("all", "cloud_api"):
        try:
            connection = cloud.load(ctx.conn, ctx.org_id)
        except DomainError as e:
            connection, note = None, e.message
        else:
            note = None if connection else "WhatsApp is not connected (crm_settings_update_organization: whatsapp)"
        if connection is not None:
            try:
                for t in cloud.CloudApi(connection).templates():
                    status = str(t.get("status") or "").upper()
                    name = str(t.get("name") or "")
                    if not name or (status != "APPROVED" and not q.include_unapproved) or wanted not in name.lower():
                        continue
                    if q.language is not None and t.get("language") != q.language:
                        continue
                    body = cloud.template_body(t)
                    items.append(TemplateRow(source="cloud_api", name=name[:512], language=str(t.get("language") or "")[:20] or None,
                                             category=str(t.get("category") or "")[:40] or None, status=status[:40] or None,
                                             body=body[:2000] if body else None, variables=variable_count(body)))
            except cloud.CloudError as e:
                note = f"WhatsApp's template list could not be read: {e.message}"
        if note:
            notes.append(note)
    return TemplateList(items=items, note="; ".join(notes) or None)


class MarkRead(Command, kw_only=True):
    """Mark a chat read: its unread count goes to 0 and WhatsApp shows the customer blue ticks (when connected)."""

    chat_id: ChatId


class ReadRef(Struct, kw_only=True, omit_defaults=True):
    chat_id: UUID
    read_receipt_sent: bool = False
    read_receipt_note: str | None = None


def present_read(ctx: QueryContext, ref: ReadRef) -> ReadOut:
    return ReadOut(chat=present_row(ctx, ref.chat_id), read_receipt_sent=ref.read_receipt_sent,
                   read_receipt_note=ref.read_receipt_note)


@whatsapp.command("mark_read", output=ReadOut, returns=ReadRef, present=present_read, open_world=True)
def mark_read(cmd: MarkRead, uow: UnitOfWork) -> ReadRef:
    row = visible_chat(uow.conn, uow.principal, cmd.chat_id)
    chat = uow.get(Chat, cmd.chat_id, field="chat_id")
    chat.mark_read(uow.principal.user_id)
    ref = ReadRef(chat_id=cmd.chat_id)
    try:
        connection = cloud.load(uow.conn, uow.org_id)
    except DomainError as e:
        ref.read_receipt_note = e.message
        return ref
    if connection is None:
        ref.read_receipt_note = "WhatsApp is not connected: only the CRM marks it read"
    elif not row["last_inbound_wamid"] or row["phone_number_id"] != connection.phone_number_id:
        ref.read_receipt_note = "no message from the customer to mark read on WhatsApp"
    else:
        try:
            cloud.CloudApi(connection).mark_read(row["last_inbound_wamid"])
            ref.read_receipt_sent = True
        except cloud.CloudError as e:
            ref.read_receipt_note = f"the read receipt was not sent: {e.message}"
    return ref


# == organizing ================================================================================================
class LinkClient(Command, kw_only=True):
    """Link a chat to a lead/client (client_id from crm_clients_search), or unlink it with client_id null. A manual
    link stays: automatic matching by phone number no longer changes it."""

    chat_id: ChatId
    client_id: Annotated[UUID | None, Meta(description="The lead/client; null unlinks.")]


@whatsapp.command("link_client", output=ChatRow, returns=UUID, present=present_row, reads=("clients",))
def link_client(cmd: LinkClient, uow: UnitOfWork) -> UUID:
    chat = _load_chat(uow, cmd.chat_id)
    if cmd.client_id is not None:
        uow.get(Client, cmd.client_id, field="client_id")
    chat.link_client(cmd.client_id)
    return chat.id


class AssignChat(Command, kw_only=True):
    """Assign a chat to a user (crm_users_list); the assignee may see it from then on."""

    chat_id: ChatId
    user_id: UserId


@whatsapp.command("assign_chat", output=ChatRow, returns=UUID, present=present_row)
def assign_chat(cmd: AssignChat, uow: UnitOfWork) -> UUID:
    chat = _load_chat(uow, cmd.chat_id)
    ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
    chat.assign(cmd.user_id)
    return chat.id


class UnassignChat(Command, kw_only=True):
    """Remove a chat's assignee (they keep seeing it only if granted by crm_whatsapp_grant_access)."""

    chat_id: ChatId


@whatsapp.command("unassign_chat", output=ChatRow, returns=UUID, present=present_row, destructive=True)
def unassign_chat(cmd: UnassignChat, uow: UnitOfWork) -> UUID:
    chat = _load_chat(uow, cmd.chat_id)
    chat.unassign()
    return chat.id


class ArchiveChat(Command, kw_only=True):
    """Archive a chat: it leaves crm_whatsapp_list_chats (archived=true lists it) until the customer writes again."""

    chat_id: ChatId


@whatsapp.command("archive_chat", output=ChatRow, returns=UUID, present=present_row, destructive=True)
def archive_chat(cmd: ArchiveChat, uow: UnitOfWork) -> UUID:
    chat = _load_chat(uow, cmd.chat_id)
    chat.archive()
    return chat.id


# == notes =====================================================================================================
class ListChatNotes(ListQuery, kw_only=True):
    """Internal notes on a chat (never sent to the customer), newest first."""

    chat_id: ChatId


@whatsapp.query("list_notes", output=Page[NoteOut])
def list_notes(q: ListChatNotes, ctx: QueryContext) -> Page[NoteOut]:
    visible_chat(ctx.conn, ctx.principal, q.chat_id)
    rows, cursor = notes_q.list_notes(ctx.conn, ctx.org_id, SUBJECT, q.chat_id, q.limit, q.cursor)
    return Page(items=[msgspec.convert(r, NoteOut) for r in rows], next_cursor=cursor)


class AddChatNote(Command, kw_only=True):
    """Add an internal note to a chat (colleagues see it; the customer never does)."""

    chat_id: ChatId
    body: NoteBody


@whatsapp.command("add_note", output=NoteOut, returns=UUID, present=present_note)
def add_note(cmd: AddChatNote, uow: UnitOfWork) -> UUID:
    _load_chat(uow, cmd.chat_id)
    note = Note(org_id=uow.org_id, subject_type=SUBJECT, subject_id=cmd.chat_id, body=cmd.body,
                author_id=uow.principal.user_id)
    uow.add(note)
    return note.id


class DeleteChatNote(Command, kw_only=True):
    """Delete a note from a chat."""

    chat_id: ChatId
    note_id: NoteId


@whatsapp.command("delete_note", output=Removed, destructive=True)
def delete_note(cmd: DeleteChatNote, uow: UnitOfWork) -> Removed:
    visible_chat(uow.conn, uow.principal, cmd.chat_id)
    note = uow.get(Note, cmd.note_id, field="note_id")
    note.ensure_on(SUBJECT, cmd.chat_id)
    note.delete()
    return Removed(id=cmd.note_id, entity="note")


# == access ====================================================================================================
class AclTarget(Struct, kw_only=True, omit_defaults=True):
    chat_id: UUID | None = None
    business_number_id: str | None = None


def _target(conn: Any, principal: Any, chat: UUID | None, number: str | None) -> tuple[dict[str, Any] | None, str]:
    """The chat (visible to the caller) or business number (the caller has access to) a grant is about."""
    if (chat is None) == (number is None):
        raise DomainError("give exactly one of chat_id or business_number_id", field="chat_id")
    if chat is not None:
        row = visible_chat(conn, principal, chat)
        return row, row["phone_number_id"]
    admin = _admin(conn, principal)
    connected = conn.execute("SELECT settings->>'phone_number_id' AS n FROM organization_connections"
                             " WHERE organization_id = %s AND provider = %s", (principal.organization_id,
                                                                               cloud.PROVIDER)).fetchone()
    known = wa_q.number_known(conn, principal.organization_id, number) or (connected and connected["n"] == number)
    if not known or not wa_q.can_see_number(conn, principal.organization_id, admin, principal.user_id, number):
        raise NotFound("business number", number, field="business_number_id")
    return None, number


def present_acl(ctx: QueryContext, target: AclTarget) -> AclOut:
    if target.chat_id is not None:
        row = wa_q.get_chat(ctx.conn, ctx.org_id, target.chat_id, admin=True, user_id=None)
        users, number = wa_q.acl_of_chat(ctx.conn, ctx.org_id, row), row["phone_number_id"]
    else:
        number = target.business_number_id or ""
        users = wa_q.acl_of_number(ctx.conn, ctx.org_id, number)
    return AclOut(chat_id=target.chat_id, business_number_id=number,
                  admins=[msgspec.convert(a, UserRef) for a in wa_q.admins(ctx.conn, ctx.org_id)],
                  users=[msgspec.convert({k: v for k, v in u.items() if v is not None}, AclEntry) for u in users])


class GetAcl(Query, kw_only=True):
    """Who may see a chat (chat_id) or every chat of a business number (business_number_id): admins, the assignee,
    and users granted with crm_whatsapp_grant_access."""

    chat_id: Annotated[UUID | None, Meta(description="A chat (crm_whatsapp_list_chats); or business_number_id.")] = None
    business_number_id: NumberId | None = None


@whatsapp.query("get_acl", output=AclOut)
def get_acl(q: GetAcl, ctx: QueryContext) -> AclOut:
    _, number = _target(ctx.conn, ctx.principal, q.chat_id, q.business_number_id)
    return present_acl(ctx, AclTarget(chat_id=q.chat_id, business_number_id=number))


class GrantAccess(Command, kw_only=True):
    """Let a user (crm_users_list) see a chat, or every chat of a business number. You can only share what you see
    yourself; admins see everything anyway."""

    user_id: UserId
    chat_id: Annotated[UUID | None, Meta(description="A chat (crm_whatsapp_list_chats); or business_number_id.")] = None
    business_number_id: NumberId | None = None


def _access_list(uow: UnitOfWork) -> WhatsappAccess:
    try:
        return uow.get(WhatsappAccess, access_list_id(uow.org_id), field="chat_id")
    except NotFound:
        access = WhatsappAccess.start(uow.org_id)
        uow.add(access)
        return access


@whatsapp.command("grant_access", output=AclOut, returns=AclTarget, present=present_acl)
def grant_access(cmd: GrantAccess, uow: UnitOfWork) -> AclTarget:
    row, number = _target(uow.conn, uow.principal, cmd.chat_id, cmd.business_number_id)
    ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
    _access_list(uow).grant(cmd.user_id, chat=cmd.chat_id, phone_number_id=cmd.business_number_id,
                            by=uow.principal.user_id)
    return AclTarget(chat_id=cmd.chat_id, business_number_id=number)


class RevokeAccess(Command, kw_only=True):
    """Take back a user's access to a chat or business number (from their next call on). An assignee keeps seeing
    their chat until unassigned (crm_whatsapp_unassign_chat)."""

    user_id: UserId
    chat_id: Annotated[UUID | None, Meta(description="A chat (crm_whatsapp_get_acl); or business_number_id.")] = None
    business_number_id: NumberId | None = None


@whatsapp.command("revoke_access", output=AclOut, returns=AclTarget, present=present_acl, destructive=True)
def revoke_access(cmd: RevokeAccess, uow: UnitOfWork) -> AclTarget:
    row, number = _target(uow.conn, uow.principal, cmd.chat_id, cmd.business_number_id)
    _access_list(uow).revoke(cmd.user_id, chat=cmd.chat_id, phone_number_id=cmd.business_number_id)
    return AclTarget(chat_id=cmd.chat_id, business_number_id=number)
