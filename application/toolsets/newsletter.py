"""Newsletter: the `crm_newsletter_*` tools (mailing lists and subscribers, campaigns and their sending, statistics,
the blacklist, the monthly quota, sender domains). Sending itself is application/newsletter_sending.py."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application import attachments
from application import newsletter_sending as sending
from application.money import percentage
from application.organization import org_settings
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, Email, ListQuery, Page, Query, Removed, sent
from application.store import SideWrite
from application.toolset import Toolset
from domain.errors import Conflict, DomainError, NotFound
from domain.newsletter import (CAMPAIGN_FIELDS, CAMPAIGN_STATUSES, CONSENT_SOURCES, LIST_FIELDS, MAX_SUBSCRIBERS_PER_CALL,
                               MAX_TEST_ADDRESSES, PLACEHOLDERS, SUBSCRIBER_STATUSES, BlacklistEntry, Campaign,
                               DnsCheck, MailingList, SenderDomain, blacklist_value, check_dns, dns_records,
                               is_blacklisted, normalize_domain, normalize_email)
from projections import newsletter as newsletter_q

CampaignStatus = Literal[CAMPAIGN_STATUSES]  # type: ignore[valid-type]
SubscriberStatus = Literal[SUBSCRIBER_STATUSES]  # type: ignore[valid-type]
ConsentSource = Literal[CONSENT_SOURCES]  # type: ignore[valid-type]
ListId = Annotated[UUID, Meta(description="The mailing list id (from crm_newsletter_list_lists or create_list).")]
CampaignId = Annotated[UUID, Meta(description="The campaign id (from crm_newsletter_list_campaigns or create_campaign).")]
DomainId = Annotated[UUID, Meta(description="The sender domain id (from crm_newsletter_list_domains or add_domain).")]
EntryId = Annotated[UUID, Meta(description="The blacklist entry id (from crm_newsletter_list_blacklist).")]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Subject = Annotated[str, Meta(min_length=1, max_length=300, description="Subject line; placeholders allowed.")]
FromName = Annotated[str, Meta(min_length=1, max_length=100, description="Sender name shown to recipients.")]
FromEmail = Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", description=(
    "Sender address; its domain must be a verified sender domain (crm_newsletter_add_domain, verify_domain) "
    "before the campaign can be sent."))]
Body = Annotated[str, Meta(max_length=500_000)]
PLACEHOLDER_HELP = "Placeholders: " + ", ".join("{{" + p + "}}" for p in PLACEHOLDERS) + "."

newsletter = Toolset(
    "newsletter", title="Newsletter", description="Mailing lists and subscribers, e-mail campaigns sent over SMTP "
                                                  "with open/click tracking, blacklist, monthly quota, sender domains",
    aggregate=Campaign, id_field="campaign_id", id_type=CampaignId, subject="a campaign",
    exists=newsletter_q.campaign_exists,
)


def _user_names(conn: Any, ids: list[Any]) -> dict[UUID, str]:
    wanted = [i for i in set(ids) if i is not None]
    if not wanted:
        return {}
    return {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM users WHERE id = ANY(%s)", (wanted,))}


def _rate(part: int, whole: int) -> float:
    return percentage(part, whole)[1]


# -- outputs ----------------------------------------------------------------------------------------------------
class ListOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    description: str | None = None
    subscribed_count: int
    unsubscribed_count: int
    bounced_count: int
    complained_count: int
    created_by: UUID | None = None
    created_by_name: str | None = None
    created_at: datetime
    updated_at: datetime


class SubscriberOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    list_id: UUID
    email: str
    first_name: str | None = None
    last_name: str | None = None
    client_id: UUID | None = None
    contact_id: UUID | None = None
    status: SubscriberStatus
    consent_source: str
    consent_at: datetime
    status_changed_at: datetime | None = None
    created_at: datetime


class Skipped(Struct, kw_only=True):
    email: str
    reason: str


class AddedSubscribers(Struct, kw_only=True, omit_defaults=True):
    list_id: UUID
    added: int
    skipped: list[Skipped] = []
    skipped_count: int = 0


class ListRef(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str | None = None
    subscribed_count: int | None = None


class Deliveries(Struct, kw_only=True):
    queued: int
    sending: int
    sent: int
    failed: int
    bounced: int
    cancelled: int


class CampaignOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    subject: str
    from_name: str
    from_email: str
    reply_to: str | None = None
    list_ids: list[UUID]
    status: CampaignStatus
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    sent_at: datetime | None = None
    cancelled_at: datetime | None = None
    recipients_count: int = 0
    tests_sent: int = 0
    created_by: UUID | None = None
    created_by_name: str | None = None
    created_at: datetime
    updated_at: datetime


class CampaignDetail(CampaignOut, kw_only=True, omit_defaults=True):
    html_body: str | None = None
    text_body: str | None = None
    links: list[str] = []
    lists: list[ListRef] = []
    deliveries: Deliveries | None = None


def _campaign(ctx: QueryContext, row: dict[str, Any], names: dict[UUID, str]) -> dict[str, Any]:
    return {**row, "created_by_name": names.get(row["created_by"])}


def present_campaign(ctx: QueryContext, campaign_id: UUID) -> CampaignDetail:
    row = newsletter_q.get_campaign(ctx.conn, ctx.org_id, campaign_id)
    out = _campaign(ctx, row, _user_names(ctx.conn, [row["created_by"]]))
    lists = []
    for list_id in row["list_ids"]:
        try:
            found = newsletter_q.get_list(ctx.conn, ctx.org_id, list_id)
            lists.append({"id": list_id, "name": found["name"], "subscribed_count": found["subscribed_count"]})
        except NotFound:
            lists.append({"id": list_id})
    out["lists"] = lists
    if row["status"] in ("sending", "sent", "cancelled"):
        out["deliveries"] = sending.delivery_counts(ctx.conn, ctx.org_id, campaign_id)
    return msgspec.convert(out, CampaignDetail)


def present_list(ctx: QueryContext, list_id: UUID) -> ListOut:
    row = newsletter_q.get_list(ctx.conn, ctx.org_id, list_id)
    return msgspec.convert({**row, "created_by_name": _user_names(ctx.conn, [row["created_by"]]).get(row["created_by"])},
                           ListOut)


newsletter.output = CampaignDetail
newsletter.present = present_campaign


# -- mailing lists ---------------------------------------------------------------------------------------------
class ListLists(ListQuery, kw_only=True):
    """Mailing lists, newest first, with how many subscribers are subscribed, unsubscribed, bounced and
    complained. Pages with `cursor`/`next_cursor`."""


@newsletter.query("list_lists", output=Page[ListOut])
def list_lists(q: ListLists, ctx: QueryContext) -> Page[ListOut]:
    rows, cursor = newsletter_q.list_lists(ctx.conn, ctx.org_id, limit=q.limit, cursor=q.cursor)
    names = _user_names(ctx.conn, [r["created_by"] for r in rows])
    return Page(items=[msgspec.convert({**r, "created_by_name": names.get(r["created_by"])}, ListOut) for r in rows],
                next_cursor=cursor)


class GetList(Query, kw_only=True):
    """One mailing list with its subscriber counts by status (the subscribers: crm_newsletter_list_subscribers)."""

    list_id: ListId


@newsletter.query("get_list", output=ListOut)
def get_list(q: GetList, ctx: QueryContext) -> ListOut:
    return present_list(ctx, q.list_id)


class CreateList(Command, kw_only=True):
    """Create a mailing list; add people with crm_newsletter_add_subscribers."""

    name: Name
    description: Annotated[str, Meta(max_length=2000)] | None = None


@newsletter.command("create_list", output=ListOut, returns=UUID, present=present_list)
def create_list(cmd: CreateList, uow: UnitOfWork) -> UUID:
    if not cmd.name.strip():
        raise DomainError("name cannot be empty", field="name")
    mailing_list = MailingList(org_id=uow.org_id, name=cmd.name, description=cmd.description,
                               created_by=uow.principal.user_id)
    uow.add(mailing_list)
    return mailing_list.id


class UpdateList(Command, kw_only=True):
    """Rename a mailing list or change its description. Only the fields you send change."""

    list_id: ListId
    name: Name | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=2000)] | None | UnsetType = UNSET


@newsletter.command("update_list", output=ListOut, returns=UUID, present=present_list)
def update_list(cmd: UpdateList, uow: UnitOfWork) -> UUID:
    mailing_list = uow.get(MailingList, cmd.list_id, field="list_id")
    mailing_list.update(sent(cmd, LIST_FIELDS))
    return mailing_list.id


class DeleteList(Command, kw_only=True):
    """Delete a mailing list and its subscribers. Refused while a scheduled or sending campaign uses it."""

    list_id: ListId


@newsletter.command("delete_list", output=Removed, destructive=True)
def delete_list(cmd: DeleteList, uow: UnitOfWork) -> Removed:
    mailing_list = uow.get(MailingList, cmd.list_id, field="list_id")
    busy = uow.conn.execute("SELECT name FROM newsletter_campaigns WHERE organization_id = %s AND %s = ANY(list_ids)"
                            " AND status IN ('scheduled', 'sending') LIMIT 1", (uow.org_id, cmd.list_id)).fetchone()
    if busy is not None:
        raise Conflict(f"campaign {busy['name']!r} is scheduled or sending to this list; cancel it first", field="list_id")
    mailing_list.delete()
    return Removed(id=cmd.list_id, entity="mailing list")


# -- subscribers --------------------------------------------------------------------------------------------------
class ListSubscribers(ListQuery, kw_only=True):
    """Subscribers of a mailing list in the order they were added, with status (subscribed, unsubscribed, bounced,
    complained), consent source and time, and the CRM client/contact they came from. Pages with `cursor`."""

    list_id: ListId
    status: SubscriberStatus | None = None


@newsletter.query("list_subscribers", output=Page[SubscriberOut])
def list_subscribers(q: ListSubscribers, ctx: QueryContext) -> Page[SubscriberOut]:
    newsletter_q.get_list(ctx.conn, ctx.org_id, q.list_id)
    rows, cursor = newsletter_q.list_subscribers(ctx.conn, ctx.org_id, q.list_id, status=q.status, limit=q.limit,
                                                 cursor=q.cursor)
    return Page(items=[msgspec.convert(r, SubscriberOut) for r in rows], next_cursor=cursor)


class SubscriberIn(Struct, kw_only=True, forbid_unknown_fields=True):
    email: Email
    first_name: Annotated[str, Meta(max_length=100)] | None = None
    last_name: Annotated[str, Meta(max_length=100)] | None = None


class AddSubscribers(Command, kw_only=True):
    """Add subscribers to a mailing list: by e-mail address (`subscribers`) and/or from CRM leads/clients
    (`client_ids`, their main e-mail) and contacts (`contact_ids`), which stay linked. Blacklisted addresses and
    addresses already on the list (whatever their status: an unsubscribed person is never resubscribed) are
    skipped and listed. Record where consent came from (`consent_source`) and when (default now)."""

    list_id: ListId
    subscribers: Annotated[list[SubscriberIn], Meta(max_length=MAX_SUBSCRIBERS_PER_CALL)] = []
    client_ids: Annotated[list[UUID], Meta(max_length=500, description="Lead/client ids (crm_clients_search).")] = []
    contact_ids: Annotated[list[UUID], Meta(max_length=500, description="Contact ids (crm_clients_get).")] = []
    consent_source: Annotated[ConsentSource, Meta(description="Where the consent to receive newsletters came from.")]
    consent_at: Annotated[datetime, Meta(description="When consent was given (default: now).")] | None = None


def _crm_candidates(uow: UnitOfWork, cmd: AddSubscribers, skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if cmd.client_ids:
        rows = {r["id"]: r for r in uow.conn.execute(
            "SELECT id, email, contact_name FROM clients WHERE organization_id = %s AND id = ANY(%s)",
            (uow.org_id, list(cmd.client_ids)))}
        for client_id in dict.fromkeys(cmd.client_ids):
            row = rows.get(client_id)
            if row is None:
                raise NotFound("client", client_id, field="client_ids")
            if not row["email"]:
                skipped.append({"email": "", "reason": f"client {client_id} has no e-mail address"})
                continue
            first, _, last = (row["contact_name"] or "").partition(" ")
            out.append({"email": row["email"], "first_name": first or None, "last_name": last or None,
                        "client_id": client_id})
    if cmd.contact_ids:
        rows = {r["id"]: r for r in uow.conn.execute(
            "SELECT id, client_id, email, name FROM client_contacts WHERE organization_id = %s AND id = ANY(%s)",
            (uow.org_id, list(cmd.contact_ids)))}
        for contact_id in dict.fromkeys(cmd.contact_ids):
            row = rows.get(contact_id)
            if row is None:
                raise NotFound("contact", contact_id, field="contact_ids")
            if not row["email"]:
                skipped.append({"email": "", "reason": f"contact {contact_id} has no e-mail address"})
                continue
            first, _, last = (row["name"] or "").partition(" ")
            out.append({"email": row["email"], "first_name": first or None, "last_name": last or None,
                        "client_id": row["client_id"], "contact_id": contact_id})
    return out


@newsletter.command("add_subscribers", output=AddedSubscribers, reads=("clients",))
def add_subscribers(cmd: AddSubscribers, uow: UnitOfWork) -> AddedSubscribers:
    if not (cmd.subscribers or cmd.client_ids or cmd.contact_ids):
        raise DomainError("give subscribers, client_ids or contact_ids", field="subscribers")
    mailing_list = uow.get(MailingList, cmd.list_id, field="list_id")
    skipped: list[dict[str, str]] = []
    candidates = [msgspec.to_builtins(s) for s in cmd.subscribers] + _crm_candidates(uow, cmd, skipped)
    blocked = newsletter_q.blacklist_values(uow.conn, uow.org_id)
    allowed = []
    for c in candidates:
        email = normalize_email(c["email"], field="subscribers")
        if is_blacklisted(email, blocked):
            skipped.append({"email": email, "reason": "blacklisted"})
        else:
            allowed.append({**c, "email": email})
    if cmd.consent_at is not None and cmd.consent_at.tzinfo is None:
        tz = ZoneInfo(org_settings(uow.conn, uow.org_id)["timezone"])
        consent_at = cmd.consent_at.replace(tzinfo=tz)
    else:
        consent_at = cmd.consent_at or datetime.now(UTC)
    added, existing = mailing_list.add_subscribers(allowed, consent_source=cmd.consent_source, consent_at=consent_at)
    skipped += existing
    return AddedSubscribers(list_id=cmd.list_id, added=len(added),
                            skipped=[Skipped(**s) for s in skipped[:100]], skipped_count=len(skipped))


class RemoveSubscriber(Command, kw_only=True):
    """Remove an address from a mailing list altogether (its consent record goes too). To stop mailing someone
    while keeping the record, prefer the blacklist (crm_newsletter_add_to_blacklist)."""

    list_id: ListId
    email: Email


@newsletter.command("remove_subscriber", output=Removed, destructive=True)
def remove_subscriber(cmd: RemoveSubscriber, uow: UnitOfWork) -> Removed:
    mailing_list = uow.get(MailingList, cmd.list_id, field="list_id")
    subscriber_id = mailing_list.remove_subscriber(cmd.email)
    return Removed(id=UUID(subscriber_id), entity="subscriber")


# -- campaigns ------------------------------------------------------------------------------------------------------
class ListCampaigns(ListQuery, kw_only=True):
    """E-mail campaigns, newest first, with status (draft, scheduled, sending, sent, cancelled), schedule and
    recipient counts. Pages with `cursor`."""

    status: CampaignStatus | None = None


@newsletter.query("list_campaigns", output=Page[CampaignOut])
def list_campaigns(q: ListCampaigns, ctx: QueryContext) -> Page[CampaignOut]:
    rows, cursor = newsletter_q.list_campaigns(ctx.conn, ctx.org_id, status=q.status, limit=q.limit, cursor=q.cursor)
    names = _user_names(ctx.conn, [r["created_by"] for r in rows])
    return Page(items=[msgspec.convert(_campaign(ctx, r, names), CampaignOut) for r in rows], next_cursor=cursor)


class GetCampaign(Query, kw_only=True):
    """One campaign with its content (subject, sender, HTML and text bodies, links), its audience (lists with
    subscriber counts) and, once sending started, its deliveries by state."""

    campaign_id: CampaignId


newsletter.get(GetCampaign, suffix="get_campaign")


def _check_lists(uow: UnitOfWork, list_ids: list[UUID]) -> None:
    for list_id in list_ids:
        if not newsletter_q.list_exists(uow.conn, uow.org_id, list_id):
            raise NotFound("mailing list", list_id, field="list_ids")


class CreateCampaign(Command, kw_only=True):
    """Create a draft campaign: subject, sender, HTML and/or text body, and the lists it goes to. Placeholders are
    checked now (an unknown one is refused, naming it); links in the HTML are tracked; an unsubscribe link is
    added when the body has no {{unsubscribe_url}}. Then crm_newsletter_send_test, and schedule_campaign or
    send_campaign. Placeholders: {{subscriber.email}}, {{subscriber.first_name}}, {{subscriber.last_name}},
    {{client.business_name}}, {{campaign.subject}}, {{unsubscribe_url}}."""

    name: Annotated[str, Meta(min_length=1, max_length=200, description="Internal name, e.g. 'March offers'.")]
    subject: Subject
    from_name: FromName
    from_email: FromEmail
    reply_to: Email | None = None
    html_body: Body | None = None
    text_body: Body | None = None
    list_ids: Annotated[list[UUID], Meta(max_length=20, description="Mailing list ids (crm_newsletter_list_lists).")] = []


@newsletter.command("create_campaign", output=CampaignDetail, returns=UUID, present=present_campaign)
def create_campaign(cmd: CreateCampaign, uow: UnitOfWork) -> UUID:
    _check_lists(uow, cmd.list_ids)
    fields = {k: getattr(cmd, k) for k in CAMPAIGN_FIELDS}
    campaign = Campaign.draft(uow.org_id, fields, uow.principal.user_id)
    uow.add(campaign)
    return campaign.id


class UpdateCampaign(Command, kw_only=True):
    """Change a draft campaign (a scheduled one: cancel it first). Only the fields you send change; placeholders
    are checked again (see crm_newsletter_create_campaign for the placeholders)."""

    campaign_id: CampaignId
    name: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType = UNSET
    subject: Subject | UnsetType = UNSET
    from_name: FromName | UnsetType = UNSET
    from_email: FromEmail | UnsetType = UNSET
    reply_to: Email | None | UnsetType = UNSET
    html_body: Body | None | UnsetType = UNSET
    text_body: Body | None | UnsetType = UNSET
    list_ids: Annotated[list[UUID], Meta(max_length=20)] | UnsetType = UNSET


def _update_campaign(campaign: Campaign, cmd: UpdateCampaign, uow: UnitOfWork) -> None:
    changes = sent(cmd, CAMPAIGN_FIELDS)
    if "list_ids" in changes:
        _check_lists(uow, changes["list_ids"])
    campaign.update(changes)


newsletter.act("update_campaign", UpdateCampaign, _update_campaign)


class SendTest(Command, kw_only=True):
    """Send the campaign now to a few test addresses (subject prefixed [TEST]), exactly as recipients would get
    it; counts against the monthly quota. Needs a verified sender domain."""

    campaign_id: CampaignId
    addresses: Annotated[list[Email], Meta(min_length=1, max_length=MAX_TEST_ADDRESSES)]


class TestSent(Struct, kw_only=True):
    campaign_id: UUID
    sent_to: list[str]


@newsletter.command("send_test", output=TestSent, open_world=True)
def send_test(cmd: SendTest, uow: UnitOfWork) -> TestSent:
    campaign = uow.get(Campaign, cmd.campaign_id, field="campaign_id")
    addresses = list(dict.fromkeys(normalize_email(a, field="addresses") for a in cmd.addresses))
    sending.smtp_settings()
    sending.check_quota(uow.conn, uow.org_id, len(addresses), field="addresses")
    content = sending.load_content(uow.conn, uow.org_id, campaign)
    content.subject = "[TEST] " + content.subject
    secret = attachments.link_secret(uow.conn)
    messages, rows = [], []
    for address in addresses:
        delivery_id = uuid4()
        message, message_id = sending.build_message(content, {"email": address}, delivery_id, secret)
        messages.append((content.from_email, address, message))
        rows.append((delivery_id, address, message_id))
    failures = sending.send_now(messages)
    refused = [f"{a} ({why})" for a, why in zip(addresses, failures) if why]
    if refused:
        raise DomainError("the SMTP server did not accept the test message for " + ", ".join(refused)
                          + "; nothing was recorded", field="addresses")
    campaign.record_test(addresses)
    for delivery_id, address, message_id in rows:
        uow.side_writes.append(SideWrite(
            "INSERT INTO campaign_deliveries (id, organization_id, campaign_id, kind, email, status, attempts,"
            " message_id, sent_at) VALUES (%s, %s, %s, 'test', %s, 'sent', 1, %s, now())",
            (delivery_id, uow.org_id, campaign.id, address, message_id)))
    return TestSent(campaign_id=campaign.id, sent_to=addresses)


class ScheduleCampaign(Command, kw_only=True):
    """Schedule a draft (or reschedule a scheduled) campaign to be sent at a time. A time without an offset is in
    the organization's time zone (crm_users_me). The sender domain must be verified and the audience must fit in
    the monthly quota (both checked now and again at sending time)."""

    campaign_id: CampaignId
    scheduled_at: Annotated[datetime, Meta(description="When to send, e.g. 2026-12-01T09:00:00 (organization time) "
                                                       "or with an offset; must be in the future.")]


def _schedule(campaign: Campaign, cmd: ScheduleCampaign, uow: UnitOfWork) -> None:
    at = cmd.scheduled_at
    if at.tzinfo is None:
        at = at.replace(tzinfo=ZoneInfo(org_settings(uow.conn, uow.org_id)["timezone"]))
    sending.verified_sender(uow.conn, uow.org_id, campaign.from_email)
    audience = sending.recipients(uow.conn, uow.org_id, campaign) if campaign.list_ids else []
    if campaign.list_ids and not audience:
        raise DomainError("the campaign's lists have no subscribed, non-blacklisted addresses", field="campaign_id")
    sending.check_quota(uow.conn, uow.org_id, len(audience))
    campaign.schedule(at.astimezone(UTC), datetime.now(UTC))


newsletter.act("schedule_campaign", ScheduleCampaign, _schedule)


class SendCampaign(Command, kw_only=True):
    """Send the campaign now to everyone subscribed on its lists (blacklisted and unsubscribed addresses never
    receive it). This cannot be undone: once started, messages leave in the background (cancel_campaign stops
    the rest). Refused, with the numbers, when the audience exceeds the monthly quota, and when the sender
    domain is not verified."""

    campaign_id: CampaignId


@newsletter.command("send_campaign", output=CampaignDetail, returns=UUID, present=present_campaign, destructive=True,
                    open_world=True)
def send_campaign(cmd: SendCampaign, uow: UnitOfWork) -> UUID:
    campaign = uow.get(Campaign, cmd.campaign_id, field="campaign_id")
    uow.side_writes.append(sending.start_sending(uow.conn, uow.org_id, campaign))
    return campaign.id


class CancelCampaign(Command, kw_only=True):
    """Cancel a scheduled campaign, or stop a sending one: messages not yet sent are not sent (those already
    sent stay sent)."""

    campaign_id: CampaignId


def _cancel(campaign: Campaign, cmd: CancelCampaign, uow: UnitOfWork) -> None:
    campaign.cancel(reason="cancelled by a user")
    uow.side_writes.append(sending.cancel_deliveries(uow.org_id, campaign.id))


newsletter.act("cancel_campaign", CancelCampaign, _cancel, destructive=True)


class DeleteCampaign(Command, kw_only=True):
    """Delete a draft or cancelled campaign (a sent one stays, with its statistics)."""

    campaign_id: CampaignId


newsletter.delete(DeleteCampaign, suffix="delete_campaign")


class CampaignStatsQuery(Query, kw_only=True):
    """Statistics of one campaign: sent (attempted), delivered (accepted by the mail server), bounced, failed,
    pending, opens and unique opens, clicks and unique clicks, unsubscribes, and their rates in percent (opens,
    clicks and unsubscribes relative to delivered). Opens are counted by a tracking pixel, so they are a lower
    bound (many mail apps block images)."""

    campaign_id: CampaignId


class CampaignRates(Struct, kw_only=True):
    delivery: float
    bounce: float
    open: float
    click: float
    click_to_open: float
    unsubscribe: float


class CampaignStatsOut(Struct, kw_only=True, omit_defaults=True):
    campaign_id: UUID
    name: str
    status: CampaignStatus
    recipients: int
    sent: int
    delivered: int
    bounced: int
    failed: int
    pending: int
    opens: int
    unique_opens: int
    clicks: int
    unique_clicks: int
    unsubscribes: int
    rates_percent: CampaignRates
    started_at: datetime | None = None
    sent_at: datetime | None = None


@newsletter.query("campaign_stats", output=CampaignStatsOut)
def campaign_stats(q: CampaignStatsQuery, ctx: QueryContext) -> CampaignStatsOut:
    row = newsletter_q.get_campaign(ctx.conn, ctx.org_id, q.campaign_id)
    d = sending.delivery_counts(ctx.conn, ctx.org_id, q.campaign_id)
    delivered, bounced = d["sent"], d["bounced"]
    attempted = delivered + d["failed"]
    return CampaignStatsOut(
        campaign_id=row["id"], name=row["name"], status=row["status"], recipients=row["recipients_count"],
        sent=attempted, delivered=delivered, bounced=bounced, failed=d["failed"] - bounced,
        pending=d["queued"] + d["sending"], opens=row["opens"], unique_opens=row["unique_opens"], clicks=row["clicks"],
        unique_clicks=row["unique_clicks"], unsubscribes=row["unsubscribes"],
        rates_percent=CampaignRates(delivery=_rate(delivered, attempted), bounce=_rate(bounced, attempted),
                                    open=_rate(row["unique_opens"], delivered),
                                    click=_rate(row["unique_clicks"], delivered),
                                    click_to_open=_rate(row["unique_clicks"], row["unique_opens"]),
                                    unsubscribe=_rate(row["unsubscribes"], delivered)),
        started_at=row["started_at"], sent_at=row["sent_at"])


# -- blacklist ---------------------------------------------------------------------------------------------------------
class BlacklistOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    value: str
    kind: Literal["address", "domain"]
    reason: str | None = None
    created_by: UUID | None = None
    created_by_name: str | None = None
    created_at: datetime


def present_entry(ctx: QueryContext, entry_id: UUID) -> BlacklistOut:
    row = newsletter_q.get_blacklist_entry(ctx.conn, ctx.org_id, entry_id)
    return msgspec.convert({**row, "created_by_name": _user_names(ctx.conn, [row["created_by"]]).get(row["created_by"])},
                           BlacklistOut)


class ListBlacklist(ListQuery, kw_only=True):
    """Blacklisted addresses and domains (never sent to, never added to lists), newest first. Pages with `cursor`."""

    kind: Literal["address", "domain"] | None = None


@newsletter.query("list_blacklist", output=Page[BlacklistOut])
def list_blacklist(q: ListBlacklist, ctx: QueryContext) -> Page[BlacklistOut]:
    rows, cursor = newsletter_q.list_blacklist(ctx.conn, ctx.org_id, kind=q.kind, limit=q.limit, cursor=q.cursor)
    names = _user_names(ctx.conn, [r["created_by"] for r in rows])
    return Page(items=[msgspec.convert({**r, "created_by_name": names.get(r["created_by"])}, BlacklistOut)
                       for r in rows], next_cursor=cursor)


class AddToBlacklist(Command, kw_only=True):
    """Blacklist an e-mail address (mario@example.com) or a whole domain (example.com, also its subdomains):
    campaigns skip it and it cannot be added to lists. Adding an existing entry returns it unchanged."""

    value: Annotated[str, Meta(min_length=3, max_length=254, description="An address or a domain.")]
    reason: Annotated[str, Meta(max_length=500)] | None = None


@newsletter.command("add_to_blacklist", output=BlacklistOut, returns=UUID, present=present_entry)
def add_to_blacklist(cmd: AddToBlacklist, uow: UnitOfWork) -> UUID:
    value, kind = blacklist_value(cmd.value)
    existing = newsletter_q.blacklist_entry(uow.conn, uow.org_id, value)
    if existing is not None:
        return existing["id"]
    entry = BlacklistEntry(org_id=uow.org_id, value=value, kind=kind, reason=cmd.reason,
                           created_by=uow.principal.user_id)
    uow.add(entry)
    return entry.id


class RemoveFromBlacklist(Command, kw_only=True):
    """Remove an entry from the blacklist (by entry_id from crm_newsletter_list_blacklist): the address or domain
    can receive campaigns again if it is subscribed."""

    entry_id: EntryId


@newsletter.command("remove_from_blacklist", output=Removed, destructive=True)
def remove_from_blacklist(cmd: RemoveFromBlacklist, uow: UnitOfWork) -> Removed:
    uow.get(BlacklistEntry, cmd.entry_id, field="entry_id").delete()
    return Removed(id=cmd.entry_id, entity="blacklist entry")


# -- quota ----------------------------------------------------------------------------------------------------------------
class GetQuota(Query, kw_only=True):
    """The organization's monthly sending quota: how many messages it may send this calendar month (its time
    zone), how many it used (campaign recipients queued or sent, and test messages) and how many remain."""


class QuotaOut(Struct, kw_only=True):
    monthly_quota: int
    used: int
    remaining: int
    month: Annotated[str, Meta(description="YYYY-MM, in the organization's time zone.")]
    resets_on: date


@newsletter.query("get_quota", output=QuotaOut)
def get_quota(q: GetQuota, ctx: QueryContext) -> QuotaOut:
    figures = sending.quota(ctx.conn, ctx.org_id)
    today = datetime.now(ZoneInfo(org_settings(ctx.conn, ctx.org_id)["timezone"])).date()
    next_month = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    return QuotaOut(**figures, month=today.strftime("%Y-%m"), resets_on=next_month)


# -- sender domains ---------------------------------------------------------------------------------------------------
class DnsRecord(Struct, kw_only=True):
    purpose: Literal["SPF", "DKIM", "DMARC"]
    type: str
    name: str
    value: str


class DomainOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    domain: str
    verified: bool
    spf_ok: bool
    dkim_ok: bool
    dmarc_ok: bool
    problems: Annotated[list[str], Meta(description="What the last check found missing or wrong, record by record.")] = []
    records: Annotated[list[DnsRecord], Meta(description="The TXT records to publish at the domain's DNS.")]
    checked_at: datetime | None = None
    verified_at: datetime | None = None
    created_by: UUID | None = None
    created_by_name: str | None = None
    created_at: datetime


def _domain_out(row: dict[str, Any], names: dict[UUID, str]) -> DomainOut:
    records = dns_records(row["domain"], row["selector"], row["public_key"], sending.spf_mechanism())
    return msgspec.convert({**row, "records": records, "created_by_name": names.get(row["created_by"])}, DomainOut)


def present_domain(ctx: QueryContext, domain_id: UUID) -> DomainOut:
    row = newsletter_q.get_domain(ctx.conn, ctx.org_id, domain_id)
    return _domain_out(row, _user_names(ctx.conn, [row["created_by"]]))


class ListDomains(Query, kw_only=True):
    """Sender domains with their verification state (SPF, DKIM, DMARC), what is missing, and the DNS records to
    publish. Campaigns can only be sent from a verified domain."""


class DomainList(Struct, kw_only=True):
    items: list[DomainOut]


@newsletter.query("list_domains", output=DomainList)
def list_domains(q: ListDomains, ctx: QueryContext) -> DomainList:
    rows = newsletter_q.list_domains(ctx.conn, ctx.org_id)
    names = _user_names(ctx.conn, [r["created_by"] for r in rows])
    return DomainList(items=[_domain_out(r, names) for r in rows])


class AddDomain(Command, kw_only=True):
    """Add a sender domain (e.g. example.com, the part after @ of campaign sender addresses): a DKIM key pair is
    generated (outgoing mail is signed with it) and the SPF, DKIM and DMARC TXT records to publish are returned.
    After publishing them, run crm_newsletter_verify_domain."""

    domain: Annotated[str, Meta(min_length=4, max_length=253, description="The domain, e.g. example.com.")]


@newsletter.command("add_domain", output=DomainOut, returns=UUID, present=present_domain)
def add_domain(cmd: AddDomain, uow: UnitOfWork) -> UUID:
    domain = normalize_domain(cmd.domain)
    if newsletter_q.domain_named(uow.conn, uow.org_id, domain) is not None:
        raise Conflict(f"{domain} is already a sender domain; see crm_newsletter_list_domains", field="domain")
    pem, public_key = sending.generate_dkim_key()
    sender = SenderDomain(org_id=uow.org_id, domain=domain, selector=sending.SELECTOR, public_key=public_key,
                          created_by=uow.principal.user_id)
    sealed = sending.seal_private_key(uow.conn, uow.org_id, sender.id, pem)
    uow.side_writes.append(SideWrite("INSERT INTO newsletter_domain_keys (domain_id, organization_id, private_key)"
                                     " VALUES (%s, %s, %s)", (sender.id, uow.org_id, sealed)))
    uow.add(sender)
    return sender.id


class VerifyDomain(Command, kw_only=True):
    """Look up the SPF, DKIM and DMARC records of a sender domain in DNS now and record the result: verified, or
    which record is missing or wrong and what to publish. DNS changes can take a while to be visible."""

    domain_id: DomainId


def lookup_txt(names: list[str]) -> dict[str, list[str] | None]:
    """TXT strings per name ([] when there are none, None when the lookup failed), from the system resolver or
    FLUSIA_DNS_SERVER=host:port."""
    import dns.exception
    import dns.resolver

    server = os.environ.get("FLUSIA_DNS_SERVER", "").strip()
    resolver = dns.resolver.Resolver(configure=not server)
    if server:
        host, _, port = server.rpartition(":") if server.count(":") == 1 or server.startswith("[") else (server, "", "")
        resolver.nameservers = [host.strip("[]") or server]
        resolver.port = int(port) if port else 53
    resolver.lifetime = 5.0
    out: dict[str, list[str] | None] = {}
    for name in names:
        try:
            answer = resolver.resolve(name, "TXT")
            out[name] = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            out[name] = []
        except (dns.exception.DNSException, OSError, ValueError):
            out[name] = None
    return out


@newsletter.command("verify_domain", output=DomainOut, returns=UUID, present=present_domain, open_world=True)
def verify_domain(cmd: VerifyDomain, uow: UnitOfWork) -> UUID:
    sender = uow.get(SenderDomain, cmd.domain_id, field="domain_id")
    names = [sender.domain, f"{sender.selector}._domainkey.{sender.domain}", f"_dmarc.{sender.domain}"]
    result: DnsCheck = check_dns(sender.domain, sender.selector, sender.public_key, sending.spf_mechanism(),
                                 lookup_txt(names))
    sender.record_check(result)
    return sender.id


class RemoveDomain(Command, kw_only=True):
    """Remove a sender domain and its signing key. Refused while a scheduled or sending campaign sends from it."""

    domain_id: DomainId


@newsletter.command("remove_domain", output=Removed, destructive=True)
def remove_domain(cmd: RemoveDomain, uow: UnitOfWork) -> Removed:
    sender = uow.get(SenderDomain, cmd.domain_id, field="domain_id")
    busy = uow.conn.execute("SELECT name FROM newsletter_campaigns WHERE organization_id = %s AND status IN"
                            " ('scheduled', 'sending') AND split_part(from_email, '@', 2) = %s LIMIT 1",
                            (uow.org_id, sender.domain)).fetchone()
    if busy is not None:
        raise Conflict(f"campaign {busy['name']!r} is scheduled or sending from this domain; cancel it first",
                       field="domain_id")
    sender.delete()
    uow.side_writes.append(SideWrite("DELETE FROM newsletter_domain_keys WHERE domain_id = %s AND organization_id = %s",
                                     (sender.id, uow.org_id)))
    return Removed(id=cmd.domain_id, entity="sender domain")
