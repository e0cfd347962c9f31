"""Leads and clients: the `crm_clients_*` tools."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application.identity import ensure_user
from application.runner import QueryContext, UnitOfWork
from application.shapes import (
    Command, Email, Limit, ListQuery, Matches, Page, Phone, Query, Removed, SearchText, Tag, sent,
)
from application import custom_fields
from application.toolset import Toolset
from application.toolsets.deals import DealRow, deal_page
from domain.clients import CLIENT_FIELDS, CONTACT_FIELDS, KINDS, LEAD_STATUSES, Client
from domain.recordings import Recording
from projections import clients as clients_q
from projections import recordings as recordings_q

ClientId = Annotated[UUID, Meta(description="From crm_clients_search or _list.")]
UserId = Annotated[UUID, Meta(description="From crm_users_list.")]
BusinessName = Annotated[str, Meta(min_length=1, max_length=200)]
PersonName = Annotated[str, Meta(min_length=1, max_length=200)]
VatNumber = Annotated[str, Meta(min_length=2, max_length=30, pattern=r"^[A-Za-z0-9 .\-]+$")]
TaxCode = Annotated[str, Meta(min_length=2, max_length=30, pattern=r"^[A-Za-z0-9]+$", description="Codice fiscale.")]
Url = Annotated[str, Meta(max_length=2000, pattern=r"^https?://\S+$")]
Source = Annotated[str, Meta(min_length=1, max_length=60, description="E.g. 'website', 'referral'.")]
Status = Literal[LEAD_STATUSES]  # type: ignore[valid-type]
Kind = Literal[KINDS]  # type: ignore[valid-type]


class Address(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    street: Annotated[str, Meta(max_length=200)] | None = None
    city: Annotated[str, Meta(max_length=100)] | None = None
    postal_code: Annotated[str, Meta(max_length=20)] | None = None
    province: Annotated[str, Meta(max_length=60)] | None = None
    country: Annotated[str, Meta(max_length=60)] | None = None


class ContactOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    role: str | None = None
    email: str | None = None
    phone: str | None = None


class ClientRow(custom_fields.CustomFieldsShown, kw_only=True, omit_defaults=True):
    """A lead/client in brief, as lists show it: people by name, the day it was created in the organization's time
    zone (crm_clients_get has everything, user ids and exact times included)."""

    id: UUID
    kind: Kind
    status: str | None = None
    business_name: str
    contact_name: str | None = None
    email: str | None = None
    phone: str | None = None
    assigned_to_name: str | None = None
    tags: list[str] = []
    created_on: date


class ClientDetail(ClientRow, kw_only=True, omit_defaults=True):
    vat_number: str | None = None
    assigned_to: UUID | None = None
    created_at: datetime
    tax_code: str | None = None
    website: str | None = None
    address: Address | None = None
    source: str | None = None
    created_by: UUID | None = None
    updated_at: datetime
    converted_at: datetime | None = None
    contacts: list[ContactOut] = []
    notes_count: int
    tasks_count: int
    open_tasks_count: int
    deals_count: int
    recordings_count: int


class SearchHit(ClientRow, kw_only=True, omit_defaults=True):
    """Also the VAT number and the exact creation time: what tells duplicates apart and which came first."""

    vat_number: str | None = None
    created_at: datetime
    score: Annotated[float, Meta(description="Relevance; higher is better. Exact VAT/e-mail/phone matches score above 2.")]


class SearchResult(Matches, kw_only=True, omit_defaults=True):
    items: list[SearchHit]


class DuplicateGroup(Struct, kw_only=True, omit_defaults=True):
    match: Literal["vat", "email", "phone"]
    value: str
    clients: list[ClientRow]


class DuplicateGroups(Struct, kw_only=True, omit_defaults=True):
    groups: list[DuplicateGroup]


class ContactList(Struct, kw_only=True, omit_defaults=True):
    items: list[ContactOut]


class RecordingSummary(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    client_id: UUID
    title: str | None = None
    media_url: str
    duration_seconds: int
    direction: str | None = None
    recorded_at: datetime | None = None
    created_by: UUID | None = None
    created_at: datetime
    has_transcript: bool
    transcript_excerpt: str | None = None


class RecordingDetail(RecordingSummary, kw_only=True, omit_defaults=True):
    transcript: str | None = None


def present_client(ctx: QueryContext, client_id: UUID) -> ClientDetail:
    return msgspec.convert(clients_q.get_client(ctx.conn, ctx.org_id, client_id), ClientDetail)


def present_client_row(ctx: QueryContext, client_id: UUID) -> ClientRow:
    return msgspec.convert(clients_q.get_client_row(ctx.conn, ctx.org_id, client_id), ClientRow)


def present_recording(ctx: QueryContext, recording_id: UUID) -> RecordingDetail:
    return msgspec.convert(recordings_q.get_recording(ctx.conn, ctx.org_id, recording_id), RecordingDetail)


clients = Toolset(
    "clients", title="Leads and clients",
    description="Leads and clients: CRUD, funnel status, conversion, assignment, tags, fuzzy search, duplicates "
                "and merge, contacts, notes, call recordings, related deals",
    aggregate=Client, id_field="client_id", id_type=ClientId, output=ClientDetail, present=present_client,
    row=ClientRow, present_row=present_client_row,
    exists=clients_q.client_exists, subject="a lead/client",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListClients(custom_fields.FiltersCustomFields, kw_only=True):
    """List leads and clients, newest first by default, by type (lead/client), funnel status, assignee, tag, source and
    creation dates."""

    type: Kind | None = None
    status: Status | None = None
    assigned_to: UUID | None = None
    unassigned: bool = False
    tag: Tag | None = None
    source: Source | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    sort: Literal["created_desc", "created_asc", "updated_desc", "name_asc", "name_desc"] = "created_desc"


@clients.query("list", output=Page[ClientRow])
def list_clients(q: ListClients, ctx: QueryContext) -> Page[ClientRow]:
    rows, cursor = clients_q.list_clients(
        ctx.conn, ctx.org_id, kind=q.type, status=q.status, assigned_to=q.assigned_to, unassigned=q.unassigned,
        tag=q.tag, source=q.source, created_from=q.created_from, created_to=q.created_to, sort=q.sort,
        custom=custom_fields.list_filter(ctx.conn, ctx.org_id, "client", q.custom_fields),
        limit=q.limit, cursor=q.cursor,
    )
    return Page(items=[msgspec.convert(r, ClientRow) for r in rows], next_cursor=cursor)


class GetClient(Query, kw_only=True):
    """One lead/client with contact persons, tags, and counts of notes, tasks, deals and recordings."""

    client_id: ClientId


@clients.query("get", output=ClientDetail)
def get_client(q: GetClient, ctx: QueryContext) -> ClientDetail:
    return present_client(ctx, q.client_id)


class SearchClients(Query, kw_only=True):
    """Find leads/clients by business or contact name, VAT number, e-mail or phone (typos, accents and case tolerated):
    turns a name into an id."""

    q: SearchText
    type: Kind | None = None
    limit: Limit = 25


@clients.query("search", output=SearchResult)
def search_clients(q: SearchClients, ctx: QueryContext) -> SearchResult:
    found = clients_q.search_clients(ctx.conn, ctx.org_id, q.q, kind=q.type, limit=q.limit)
    return SearchResult(items=[msgspec.convert(r, SearchHit) for r in found.rows], match=found.match)


class FindDuplicates(Query, kw_only=True):
    """Groups of leads/clients sharing a VAT number, e-mail or phone (normalised: 'IT 123' = '123', '+39 02 1' =
    '0039021'). Use before crm_clients_merge or crm_clients_delete."""

    by: Annotated[Literal["any", "vat", "email", "phone"], Meta(description="Which field must match.")] = "any"
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


@clients.query("find_duplicates", output=DuplicateGroups)
def find_duplicates(q: FindDuplicates, ctx: QueryContext) -> DuplicateGroups:
    groups = clients_q.find_duplicates(ctx.conn, ctx.org_id, by=q.by, limit=q.limit)
    return DuplicateGroups(groups=[msgspec.convert(g, DuplicateGroup) for g in groups])


class ClientPageQuery(ListQuery, kw_only=True):
    client_id: ClientId


class ListClientDeals(ClientPageQuery, kw_only=True):
    """Deals of a lead/client, newest first."""


@clients.query("list_deals", output=Page[DealRow], reads=("deals",))
def list_client_deals(q: ListClientDeals, ctx: QueryContext) -> Page[DealRow]:
    clients.require(ctx, q.client_id)
    return deal_page(ctx, {"client_id": q.client_id}, "created_desc", q.limit, q.cursor)


class ListContacts(Query, kw_only=True):
    """Contact persons of a lead/client (name, role, e-mail, phone)."""

    client_id: ClientId


@clients.query("list_contacts", output=ContactList)
def list_contacts(q: ListContacts, ctx: QueryContext) -> ContactList:
    clients.require(ctx, q.client_id)
    return ContactList(items=[msgspec.convert(r, ContactOut) for r in clients_q.list_contacts(ctx.conn, ctx.org_id, q.client_id)])


class ListRecordings(ClientPageQuery, kw_only=True):
    """Call recordings of a lead/client, newest first: title, duration, direction, media URL, transcript excerpt."""


@clients.query("list_recordings", output=Page[RecordingSummary])
def list_recordings(q: ListRecordings, ctx: QueryContext) -> Page[RecordingSummary]:
    clients.require(ctx, q.client_id)
    rows, cursor = recordings_q.list_recordings(ctx.conn, ctx.org_id, q.client_id, q.limit, q.cursor)
    return Page(items=[msgspec.convert(r, RecordingSummary) for r in rows], next_cursor=cursor)


class GetRecording(Query, kw_only=True):
    """One call recording with its full transcript and media reference."""

    recording_id: Annotated[UUID, Meta(description="From crm_clients_list_recordings.")]


@clients.query("get_recording", output=RecordingDetail)
def get_recording(q: GetRecording, ctx: QueryContext) -> RecordingDetail:
    return present_recording(ctx, q.recording_id)


# -- creating ----------------------------------------------------------------------------------------------
class NewClientFields(custom_fields.WithCustomFields, kw_only=True):
    business_name: BusinessName
    contact_name: PersonName | None = None
    vat_number: VatNumber | None = None
    tax_code: TaxCode | None = None
    email: Email | None = None
    phone: Phone | None = None
    website: Url | None = None
    address: Address | None = None
    source: Source | None = None
    assigned_to: Annotated[UUID | None, Meta(description="From crm_users_list.")] = None
    tags: Annotated[list[Tag], Meta(max_length=20)] = []


class CreateLead(NewClientFields, kw_only=True):
    """Create a lead (a prospect, status 'new'); its id is what later calls need, e.g. crm_tasks_create(client_id). Find
    an assignee with crm_users_list."""


class CreateClient(NewClientFields, kw_only=True):
    """Create a client directly (already a customer, no funnel status). Returns it with its id."""


def _create(factory: Callable[..., Client]) -> Callable[[NewClientFields, UnitOfWork], UUID]:
    def handle(cmd: NewClientFields, uow: UnitOfWork) -> UUID:
        if cmd.assigned_to is not None:
            ensure_user(uow.conn, uow.org_id, cmd.assigned_to, field="assigned_to")
        client = factory(uow.org_id, sent(cmd, CLIENT_FIELDS), cmd.assigned_to, uow.principal.user_id)
        for tag in cmd.tags:
            client.add_tag(tag)
        custom_fields.record(uow, client, "client", cmd.custom_fields, creating=True)
        uow.add(client)
        return client.id

    return handle


clients.command("create_lead", input=CreateLead, output=ClientRow, returns=UUID,
                present=present_client_row)(_create(Client.create_lead))
clients.command("create", input=CreateClient, output=ClientRow, returns=UUID,
                present=present_client_row)(_create(Client.create_client))


# -- changing one client: load, call the domain, save --------------------------------------------------------
class UpdateClient(custom_fields.ChangesCustomFields, kw_only=True):
    """Change a lead's/client's details (funnel status, assignee and tags have their own tools)."""

    client_id: ClientId
    business_name: BusinessName | UnsetType = UNSET
    contact_name: PersonName | None | UnsetType = UNSET
    vat_number: VatNumber | None | UnsetType = UNSET
    tax_code: TaxCode | None | UnsetType = UNSET
    email: Email | None | UnsetType = UNSET
    phone: Phone | None | UnsetType = UNSET
    website: Url | None | UnsetType = UNSET
    address: Address | None | UnsetType = UNSET
    source: Source | None | UnsetType = UNSET


def _changes(client: Client, cmd: UpdateClient, uow: UnitOfWork) -> dict:
    custom_fields.record(uow, client, "client", cmd.custom_fields, creating=False)
    return sent(cmd, CLIENT_FIELDS)


clients.update(UpdateClient, _changes)


class UpdateStatus(Command, kw_only=True):
    """Move a lead in the funnel: new, contacted, qualified, unqualified or lost (clients have no funnel status)."""

    client_id: ClientId
    status: Status


clients.act("update_status", UpdateStatus, lambda c, cmd, uow: c.set_status(cmd.status), presents_entity=True,
            row=True)


class ConvertToClient(Command, kw_only=True):
    """Turn a lead into a client (a customer). Its deals, notes and tasks stay attached."""

    client_id: ClientId


clients.act("convert_to_client", ConvertToClient, lambda c, cmd, uow: c.convert_to_client(), presents_entity=True,
            row=True)


clients.assignment(label="Client",
                   assign_doc="Assign a lead/client to a user (user_id from crm_users_list).",
                   unassign_doc="Leave a lead/client with nobody assigned.")
clients.tags(label="Client")


class AddContact(Command, kw_only=True):
    """Add a contact person to a lead/client. Returns the contact with its id (for crm_deals_add_contact)."""

    client_id: ClientId
    name: PersonName
    role: Annotated[str, Meta(max_length=100, description="Job title or role, e.g. 'CFO'.")] | None = None
    email: Email | None = None
    phone: Phone | None = None


def contact_of(client: Client, contact_id: UUID) -> ContactOut:
    """The contact as the client now holds it: what add/update return (the contact, not the whole client)."""
    return msgspec.convert(client.contacts[str(contact_id)], ContactOut)


clients.act("add_contact", AddContact, lambda c, cmd, uow: contact_of(c, c.add_contact(sent(cmd, CONTACT_FIELDS))),
            output=ContactOut, present=None, returns=ContactOut)


class UpdateContact(Command, kw_only=True):
    """Change a contact person of a lead/client."""

    client_id: ClientId
    contact_id: Annotated[UUID, Meta(description="From crm_clients_list_contacts.")]
    name: PersonName | UnsetType = UNSET
    role: Annotated[str, Meta(max_length=100)] | None | UnsetType = UNSET
    email: Email | None | UnsetType = UNSET
    phone: Phone | None | UnsetType = UNSET


def update_contact(client: Client, cmd: UpdateContact, uow: UnitOfWork) -> ContactOut:
    client.update_contact(cmd.contact_id, sent(cmd, CONTACT_FIELDS))
    return contact_of(client, cmd.contact_id)


clients.act("update_contact", UpdateContact, update_contact, output=ContactOut, present=None, returns=ContactOut)


class RemoveContact(Command, kw_only=True):
    """Remove a contact person from a lead/client."""

    client_id: ClientId
    contact_id: Annotated[UUID, Meta(description="From crm_clients_list_contacts.")]


def remove_contact(client: Client, cmd: RemoveContact, uow: UnitOfWork) -> Removed:
    client.remove_contact(cmd.contact_id)
    return Removed(id=cmd.contact_id, entity="contact")


clients.act("remove_contact", RemoveContact, remove_contact, destructive=True, output=Removed, present=None,
            returns=Removed)


class MergeClients(Command, kw_only=True):
    """Merge duplicates (crm_clients_find_duplicates) into a survivor: it keeps its fields, fills empty ones, gains
    their tags and contacts, takes their deals, notes, tasks and recordings; the duplicates go."""

    survivor_id: Annotated[UUID, Meta(description="The lead/client that remains.")]
    duplicate_ids: Annotated[list[UUID], Meta(min_length=1, max_length=20, description="Leads/clients merged into the survivor.")]


@clients.command("merge", output=ClientRow, returns=UUID, present=present_client_row, destructive=True,
                  writes=("deals", "tasks", "activities"))  # their read models follow the duplicates to the survivor
def merge_clients(cmd: MergeClients, uow: UnitOfWork) -> UUID:
    survivor = uow.get(Client, cmd.survivor_id, field="survivor_id")
    for i, dup_id in enumerate(dict.fromkeys(cmd.duplicate_ids)):
        survivor.absorb(uow.get(Client, dup_id, field=f"duplicate_ids[{i}]"))
    return survivor.id


class DeleteClient(Command, kw_only=True):
    """Delete a lead/client: it leaves lists and search; its history stays in the audit trail."""

    client_id: ClientId


clients.delete(DeleteClient)


# -- notes ---------------------------------------------------------------------------------------------------
clients.notes(subject_type="client")


# -- recordings --------------------------------------------------------------------------------------------
class AddRecording(Command, kw_only=True):
    """Attach a call recording to a lead/client: media_url, duration and, if any, the transcript."""

    client_id: ClientId
    media_url: Annotated[str, Meta(max_length=2000, pattern=r"^(https?|s3|storage)://\S+$",
                                   description="https://... or storage://...")]
    duration_seconds: Annotated[int, Meta(ge=0, le=86400)]
    transcript: Annotated[str, Meta(max_length=500_000)] | None = None
    title: Annotated[str, Meta(max_length=200)] | None = None
    direction: Literal["inbound", "outbound"] | None = None
    recorded_at: Annotated[datetime | None, Meta(description="When the call took place (ISO 8601).")] = None


@clients.command("add_recording", output=RecordingDetail, returns=UUID, present=present_recording)
def add_recording(cmd: AddRecording, uow: UnitOfWork) -> UUID:
    uow.get(Client, cmd.client_id, field="client_id")
    recording = Recording(
        org_id=uow.org_id, client_id=cmd.client_id, title=cmd.title, media_url=cmd.media_url,
        duration_seconds=cmd.duration_seconds, transcript=cmd.transcript, direction=cmd.direction,
        recorded_at=cmd.recorded_at, created_by=uow.principal.user_id,
    )
    uow.add(recording)
    return recording.id


class DeleteRecording(Command, kw_only=True):
    """Delete a call recording."""

    recording_id: Annotated[UUID, Meta(description="From crm_clients_list_recordings.")]


@clients.command("delete_recording", output=Removed, destructive=True)
def delete_recording(cmd: DeleteRecording, uow: UnitOfWork) -> Removed:
    uow.get(Recording, cmd.recording_id, field="recording_id").delete()
    return Removed(id=cmd.recording_id, entity="recording")


# -- erasure on request (GDPR art. 17) ---------------------------------------------------------------------------
class ErasePersonalData(Command, kw_only=True):
    """Erase a person's data (GDPR art. 17): contact name, tax code, e-mail, phone, address, contacts, notes and
    transcripts (merged duplicates' too) read "[erased]" everywhere, history included; business name and VAT stay. Works
    on deleted leads/clients. Irreversible."""

    client_id: ClientId


class Erased(Struct, kw_only=True):
    client_id: UUID
    erased: bool
    merged_duplicates: Annotated[int, Meta(description="Duplicates merged into it, erased with it.")]
    notes: int
    recordings: int
    deals: Annotated[int, Meta(description="Deals whose contact names were erased.")]
    keys_destroyed: int


def _absorbed(uow: UnitOfWork, client: Client) -> list[UUID]:
    """Every duplicate merged into `client`, and those merged into them."""
    found: list[UUID] = []
    pending = list(client.absorbed_ids)
    while pending:
        duplicate_id = pending.pop()
        if duplicate_id in found or duplicate_id == client.id:
            continue
        found.append(duplicate_id)
        duplicate = uow.store.repository.get(duplicate_id)
        pending += duplicate.absorbed_ids
    return found


@clients.command("erase_personal_data", output=Erased, destructive=True, writes=("deals",))
def erase_personal_data(cmd: ErasePersonalData, uow: UnitOfWork) -> Erased:
    from eventsourcing.application import AggregateNotFoundError

    from application import personal_data
    from application.store import SideWrite
    from domain.errors import NotFound

    try:
        client = uow.store.repository.get(cmd.client_id)  # a deleted one too: its data is still in its events
    except AggregateNotFoundError:
        raise NotFound("client", cmd.client_id, field="client_id") from None
    if not isinstance(client, Client) or client.org_id != uow.org_id:
        raise NotFound("client", cmd.client_id, field="client_id")
    client.erase_personal_data()
    uow.add(client)
    duplicates = _absorbed(uow, client)
    subjects = [client.id, *duplicates]
    org = uow.org_id
    notes = [r["id"] for r in uow.conn.execute(
        "SELECT id FROM notes WHERE organization_id = %s AND subject_type = 'client' AND subject_id = ANY(%s)",
        (org, subjects)).fetchall()]
    recordings = [r["id"] for r in uow.conn.execute(
        "SELECT id FROM recordings WHERE organization_id = %s AND client_id = ANY(%s)", (org, subjects)).fetchall()]
    deals = [r["id"] for r in uow.conn.execute(
        "SELECT DISTINCT d.id FROM deals d JOIN deal_contacts dc ON dc.deal_id = d.id"
        " WHERE d.organization_id = %s AND d.client_id = ANY(%s) ORDER BY d.id", (org, subjects)).fetchall()]
    keys = uow.conn.execute(
        "SELECT count(*) AS n FROM personal_data_keys WHERE organization_id = %s AND subject_id = ANY(%s)"
        " AND erased_at IS NULL", (org, subjects)).fetchone()["n"]
    uow.side_writes += [SideWrite(sql, params) for sql, params in personal_data.erase_statements(
        org, subjects, [*subjects, *notes, *recordings, *deals], client.id)]
    return Erased(client_id=client.id, erased=True, merged_duplicates=len(duplicates), notes=len(notes),
                  recordings=len(recordings), deals=len(deals), keys_destroyed=keys)
