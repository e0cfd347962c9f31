"""Deals: the `crm_deals_*` tools (deals, their service lines, contacts, commissions and notes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError
from msgspec import UNSET, Meta, Struct, UnsetType

from application.identity import ensure_user
from application.toolsets.pipelines import load_pipeline
from application.money import AmountArg, Money, money
from application.values import decimal_range
from application.organization import org_settings, org_today
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Matches, Page, Query, SearchText, sent
from application import custom_fields
from application.toolset import Toolset
from domain.clients import Client
from domain.deals import DEAL_FIELDS, STATUSES, Deal
from domain.errors import DomainError, NotFound
from domain.money import percent_of, to_cents
from domain.pipelines import StageNotFound, default_pipeline_id
from domain.values import MAX_AMOUNT
from domain.services import CatalogService
from projections import deals as deals_q
from projections import pipelines as pipelines_q
from projections import invoices as invoices_q

DealId = Annotated[UUID, Meta(description="From crm_deals_list or _search.")]
Title = Annotated[str, Meta(min_length=1, max_length=300)]
Status = Literal[STATUSES]  # type: ignore[valid-type]
Percent = Annotated[Decimal, Meta(description="Percent, e.g. \"12.5\".",
                                  **decimal_range(0, 100))]
Quantity = Annotated[Decimal, Meta(description="E.g. \"2.5\" (hours).",
                                   **decimal_range(0, 10**9))]
LineId = Annotated[UUID, Meta(description="From crm_deals_list_services.")]


# A deal in brief shows its client's and stage's names only to callers who may read them (shapes.FOREIGN_LABELS);
# a deal's details also show the client's contact persons, the stage's win probability and whether each line's
# catalog service is still sellable.
DEAL_READS: tuple[str, ...] = ()
DETAIL_READS = ("clients", "pipelines", "services")


class DealRow(custom_fields.CustomFieldsShown, kw_only=True, omit_defaults=True):
    """A deal in brief, as lists show it (crm_deals_get has everything: stage and owner ids, exact times)."""

    id: UUID
    title: str
    status: Status
    client_id: UUID | None = None
    client_name: str | None = None
    stage_name: str | None = None
    value: Money
    owner_name: str | None = None
    close_date: date | None = None
    expected_close_date: date | None = None
    created_on: date


class DealOut(DealRow, kw_only=True, omit_defaults=True):
    stage_id: UUID
    owner_id: UUID | None = None
    created_at: datetime
    description: str | None = None
    pipeline_id: UUID
    pipeline_name: str | None = None
    stage_probability: int | None = None
    value_is_explicit: bool
    """true: the value was set by hand; false: it is the sum of the service lines."""
    currency: str
    lost_reason: str | None = None
    updated_at: datetime


class LineOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    service_id: UUID
    name: str
    code: str | None = None
    unit: str | None = None
    vat_rate: Decimal
    quantity: Decimal
    unit_price: Money
    discount_percent: Decimal
    total: Money
    service_active: bool


class DealContactOut(Struct, kw_only=True, omit_defaults=True):
    contact_id: UUID
    name: str | None = None
    role: str | None = None
    job_title: str | None = None
    email: str | None = None
    phone: str | None = None


class CommissionOut(Struct, kw_only=True, omit_defaults=True):
    user_id: UUID
    user_name: str | None = None
    percent: Decimal | None = None
    fixed_amount: Money | None = None
    amount: Annotated[Money, Meta(description="The commission on the deal's current value.")]


class DealTotals(Struct, kw_only=True, omit_defaults=True):
    services_total: Money
    value: Money
    weighted_value: Annotated[Money, Meta(description="value x the stage's win probability.")]
    vat_total: Money
    commissions_total: Money


class DealDetail(DealOut, kw_only=True, omit_defaults=True):
    services: list[LineOut]
    contacts: list[DealContactOut]
    commissions: list[CommissionOut]
    totals: DealTotals
    invoiced: Annotated[Money | None, Meta(description="Allocated to it from invoices (crm_invoices_allocate).")] = None
    paid: Annotated[Money | None, Meta(description="The paid share of those invoice amounts.")] = None


class LineList(Struct, kw_only=True, omit_defaults=True):
    items: list[LineOut]
    total: Money
    deal_value: Money | None = None
    """The deal's value now (the lines' total unless set by hand)."""


class DealContactList(Struct, kw_only=True, omit_defaults=True):
    items: list[DealContactOut]


class CommissionList(Struct, kw_only=True, omit_defaults=True):
    items: list[CommissionOut]
    total: Money


class DealSearchHit(DealRow, kw_only=True, omit_defaults=True):
    score: float


class DealSearchResult(Matches, kw_only=True, omit_defaults=True):
    items: list[DealSearchHit]


def deal_page(ctx: QueryContext, filters: dict[str, Any], sort: str, limit: int, cursor: str | None) -> Page[DealRow]:
    """A page of deals in brief: crm_deals_list and a client's deals (crm_clients_list_deals) alike."""
    rows, next_cursor = deals_q.list_deals(ctx.conn, ctx.org_id, filters=filters, sort=sort, limit=limit, cursor=cursor)
    return Page(items=[_deal_out(r) for r in rows], next_cursor=next_cursor)


def _deal_out(row: dict[str, Any], tp: type = DealRow) -> Any:
    row = dict(row)
    row["value"] = money(row.pop("value_cents"), row["currency"])
    row["value_is_explicit"] = row.pop("explicit_value")
    row.pop("created_by", None)
    return msgspec.convert(row, tp)


def _lines(ctx: QueryContext, deal_id: UUID, currency: str) -> list[LineOut]:
    out = []
    for r in deals_q.list_lines(ctx.conn, ctx.org_id, deal_id):
        r["unit_price"] = money(r.pop("unit_price_cents"), currency)
        r["total"] = money(r.pop("total_cents"), currency)
        out.append(msgspec.convert(r, LineOut))
    return out


def _commissions(ctx: QueryContext, deal_id: UUID, value_cents: int, currency: str) -> list[CommissionOut]:
    out = []
    for r in deals_q.list_commissions(ctx.conn, ctx.org_id, deal_id):
        fixed = r.pop("amount_cents")
        cents = fixed if fixed is not None else percent_of(value_cents, r["percent"])
        out.append(CommissionOut(user_id=r["user_id"], user_name=r["user_name"], percent=r["percent"],
                                 fixed_amount=None if fixed is None else money(fixed, currency), amount=money(cents, currency)))
    return out


def _invoicing(ctx: QueryContext, deal_id: UUID, currency: str) -> dict[str, Money]:
    """What the deal was invoiced (its invoice allocations) and how much of that is paid: sums, not invoice data."""
    t = invoices_q.deal_totals(ctx.conn, ctx.org_id, deal_id)
    return {"invoiced": money(t["invoiced_cents"], currency), "paid": money(t["paid_cents"], currency)}


def present_deal(ctx: QueryContext, deal_id: UUID) -> DealDetail:
    row = deals_q.get_deal(ctx.conn, ctx.org_id, deal_id)
    base = _deal_out(row, DealOut)
    cur = base.currency
    lines = _lines(ctx, deal_id, cur)
    commissions = _commissions(ctx, deal_id, base.value.cents, cur)
    vat = sum(percent_of(line.total.cents, line.vat_rate) for line in lines)
    totals = DealTotals(
        services_total=money(sum(line.total.cents for line in lines), cur), value=base.value,
        weighted_value=money(percent_of(base.value.cents, base.stage_probability or 0), cur),
        vat_total=money(vat, cur), commissions_total=money(sum(c.amount.cents for c in commissions), cur),
    )
    contacts = [msgspec.convert(r, DealContactOut) for r in deals_q.list_contacts(ctx.conn, ctx.org_id, deal_id)]
    return DealDetail(**{f: getattr(base, f) for f in DealOut.__struct_fields__}, services=lines, contacts=contacts,
                      commissions=commissions, totals=totals, **_invoicing(ctx, deal_id, cur))


deals = Toolset(
    "deals", title="Deals", description="Deals, status (open/accepted/rejected), stages, services, contacts, "
                                       "commissions, notes",
    aggregate=Deal, id_field="deal_id", id_type=DealId, output=DealDetail, present=present_deal,
    row=DealRow, present_row=lambda ctx, deal_id: _deal_out(deals_q.get_deal(ctx.conn, ctx.org_id, deal_id)),
    exists=deals_q.deal_exists, subject="a deal",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListDeals(custom_fields.FiltersCustomFields, kw_only=True):
    """List deals by status ('accepted' = won, 'rejected' = lost), pipeline, stage, client, owner, value and dates. E.g.
    won last month, largest first: status='accepted', closed_from, closed_to, sort='value_desc'."""

    status: Status | None = None
    pipeline_id: UUID | None = None
    stage_id: UUID | None = None
    client_id: UUID | None = None
    owner_id: UUID | None = None
    unassigned: bool = False
    value_min: Annotated[Decimal | None, Meta(description="Minimum value (inclusive), e.g. \"10000\".",
                                              **decimal_range(0, MAX_AMOUNT))] = None
    value_max: Annotated[Decimal | None, Meta(**decimal_range(0, MAX_AMOUNT))] = None
    closed_from: date | None = None
    closed_to: date | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    sort: Literal["created_desc", "created_asc", "updated_desc", "value_desc", "value_asc", "close_date_desc",
                  "close_date_asc"] = "created_desc"


@deals.query("list", output=Page[DealRow], reads=DEAL_READS)
def list_deals(q: ListDeals, ctx: QueryContext) -> Page[DealRow]:
    filters = {"status": q.status, "pipeline_id": q.pipeline_id, "stage_id": q.stage_id, "client_id": q.client_id,
               "owner_id": q.owner_id, "unassigned": q.unassigned, "closed_from": q.closed_from, "closed_to": q.closed_to,
               "created_from": q.created_from, "created_to": q.created_to,
               "value_min_cents": None if q.value_min is None else to_cents(q.value_min, field="value_min"),
               "value_max_cents": None if q.value_max is None else to_cents(q.value_max, field="value_max"),
               "custom": custom_fields.list_filter(ctx.conn, ctx.org_id, "deal", q.custom_fields)}
    return deal_page(ctx, filters, q.sort, q.limit, q.cursor)


class GetDeal(Query, kw_only=True):
    """One deal with service lines, contacts, commissions and totals (value, weighted value, VAT, commissions)."""

    deal_id: DealId


@deals.query("get", output=DealDetail, reads=DETAIL_READS)
def get_deal(q: GetDeal, ctx: QueryContext) -> DealDetail:
    return present_deal(ctx, q.deal_id)


class SearchDeals(Query, kw_only=True):
    """Search deals by title, client name or note text (typo-tolerant)."""

    q: SearchText
    limit: Annotated[int, Meta(ge=1, le=100)] = 25


@deals.query("search", output=DealSearchResult, reads=DEAL_READS)
def search_deals(q: SearchDeals, ctx: QueryContext) -> DealSearchResult:
    found = deals_q.search_deals(ctx.conn, ctx.org_id, q.q, q.limit)
    return DealSearchResult(items=[_deal_out(r, DealSearchHit) for r in found.rows], match=found.match)


class DealQuery(Query, kw_only=True):
    deal_id: DealId


class ListDealServices(DealQuery, kw_only=True):
    """The service lines of a deal: quantity, unit price, discount and line total."""


@deals.query("list_services", output=LineList, reads=("services",))
def list_deal_services(q: ListDealServices, ctx: QueryContext) -> LineList:
    return present_lines(ctx, q.deal_id)


def present_lines(ctx: QueryContext, deal_id: UUID) -> LineList:
    row = deals_q.get_deal(ctx.conn, ctx.org_id, deal_id)
    lines = _lines(ctx, deal_id, row["currency"])
    return LineList(items=lines, total=money(sum(line.total.cents for line in lines), row["currency"]),
                    deal_value=money(row["value_cents"], row["currency"]))


class ListDealContacts(DealQuery, kw_only=True):
    """The client's contact persons involved in a deal."""


@deals.query("list_contacts", output=DealContactList, reads=("clients",))
def list_deal_contacts(q: ListDealContacts, ctx: QueryContext) -> DealContactList:
    deals.require(ctx, q.deal_id)
    return present_contacts(ctx, q.deal_id)


def present_contacts(ctx: QueryContext, deal_id: UUID) -> DealContactList:
    return DealContactList(items=[msgspec.convert(r, DealContactOut) for r in deals_q.list_contacts(ctx.conn, ctx.org_id, deal_id)])


class ListDealCommissions(DealQuery, kw_only=True):
    """Commissions on a deal per user (percent of value or fixed amount) with the resulting amounts."""


@deals.query("list_commissions", output=CommissionList)
def list_deal_commissions(q: ListDealCommissions, ctx: QueryContext) -> CommissionList:
    return present_commissions(ctx, q.deal_id)


def present_commissions(ctx: QueryContext, deal_id: UUID) -> CommissionList:
    row = deals_q.get_deal(ctx.conn, ctx.org_id, deal_id)
    items = _commissions(ctx, deal_id, row["value_cents"], row["currency"])
    return CommissionList(items=items, total=money(sum(c.amount.cents for c in items), row["currency"]))


# -- creating --------------------------------------------------------------------------------------------
class CreateDeal(custom_fields.WithCustomFields, kw_only=True):
    """Create a deal for a lead/client, in the default pipeline's first stage unless pipeline_id/stage_id
    (crm_pipelines_list) say otherwise. Give `value`, or add lines with crm_deals_add_service."""

    title: Title
    client_id: Annotated[UUID, Meta(description="Lead/client id (crm_clients_search).")]
    pipeline_id: UUID | None = None
    stage_id: UUID | None = None
    value: Annotated[Decimal | None, Meta(description="Explicit deal value, e.g. \"45000\"; omit to use the sum of service lines.",
                                          **decimal_range(0, MAX_AMOUNT))] = None
    owner_id: Annotated[UUID | None, Meta(description="From crm_users_list; default you.")] = None
    expected_close_date: date | None = None
    description: Annotated[str, Meta(max_length=20000)] | None = None


@deals.command("create", output=DealRow, returns=UUID, present=deals.present_row, reads=DEAL_READS)
def create_deal(cmd: CreateDeal, uow: UnitOfWork) -> UUID:
    uow.get(Client, cmd.client_id, field="client_id")
    pipeline = load_pipeline(uow, cmd.pipeline_id or default_pipeline_id(uow.org_id))
    owner = cmd.owner_id if cmd.owner_id is not None else uow.principal.user_id
    if owner is not None:
        ensure_user(uow.conn, uow.org_id, owner, field="owner_id")
    with stage_of_another_pipeline(uow):
        deal = Deal.create(
            uow.org_id, client_id=cmd.client_id, title=cmd.title, pipeline=pipeline, stage_id=cmd.stage_id,
            currency=org_settings(uow.conn, uow.org_id)["currency"], owner_id=owner,
            value_cents=None if cmd.value is None else to_cents(cmd.value, field="value"),
            fields={"description": cmd.description, "expected_close_date": cmd.expected_close_date},
            created_by=uow.principal.user_id,
        )
    custom_fields.record(uow, deal, "deal", cmd.custom_fields, creating=True)
    uow.add(deal)
    return deal.id


# -- changing one deal -----------------------------------------------------------------------------------
def deal_command(suffix: str, input: type[Struct], act, *, destructive: bool = False, row: bool = False,
                 shows: tuple[type, Any, tuple[str, ...]] | None = None) -> None:
    """A tool that changes one deal and answers with the deal in brief (`row`), or with the part of it the tool is
    about (`shows`: output, presenter and what it reads: the deal's service lines, contacts or commissions)."""
    if shows is not None:
        output, present, reads = shows
        deals.act(suffix, input, act, destructive=destructive, presents_entity=True, output=output, present=present,
                  reads=reads)
    else:
        deals.act(suffix, input, act, destructive=destructive, presents_entity=True, row=row,
                  reads=DEAL_READS if row else DETAIL_READS)


SHOWS_LINES = (LineList, present_lines, ("services",))
SHOWS_CONTACTS = (DealContactList, present_contacts, ("clients",))
SHOWS_COMMISSIONS = (CommissionList, present_commissions, ())


class UpdateDeal(custom_fields.ChangesCustomFields, kw_only=True):
    """Change a deal's fields (value null: back to the lines' sum). Status, stage and owner: _set_status, _move_stage,
    _assign."""

    deal_id: DealId
    title: Title | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=20000)] | None | UnsetType = UNSET
    expected_close_date: date | None | UnsetType = UNSET
    client_id: Annotated[UUID, Meta(description="Move the deal to another lead/client.")] | UnsetType = UNSET
    value: AmountArg | None | UnsetType = UNSET


def _update(deal: Deal, cmd: UpdateDeal, uow: UnitOfWork) -> None:
    changes = sent(cmd, DEAL_FIELDS)
    if "client_id" in changes:
        uow.get(Client, cmd.client_id, field="client_id")
    custom_fields.record(uow, deal, "deal", cmd.custom_fields, creating=False)
    deal.update(changes)
    if cmd.value is not UNSET:
        deal.set_value(None if cmd.value is None else to_cents(cmd.value, field="value"))


deal_command("update", UpdateDeal, _update, row=True)


class SetStatus(Command, kw_only=True):
    """Set a deal's status: 'accepted' (won), 'rejected' (lost, optional reason) or 'open' (reopen). Closing records
    close_date (default today)."""

    deal_id: DealId
    status: Status
    reason: Annotated[str, Meta(max_length=1000, description="Why it was lost (only with 'rejected').")] | None = None
    close_date: Annotated[date | None, Meta(description="Not in the future; default today.")] = None


deal_command("set_status", SetStatus, lambda d, cmd, uow: d.set_status(
    cmd.status, today=org_today(uow.conn, uow.org_id), reason=cmd.reason, close_date=cmd.close_date), row=True)


class MoveStage(Command, kw_only=True):
    """Move a deal to another stage (ids from crm_pipelines_get); to another pipeline with its pipeline_id too."""

    deal_id: DealId
    stage_id: UUID
    pipeline_id: Annotated[UUID | None, Meta(description="Only to change pipeline: the stage's pipeline.")] = None


@contextmanager
def stage_of_another_pipeline(uow: UnitOfWork) -> Iterator[None]:
    """A stage that is not in the pipeline: say which pipeline it belongs to, so the model can pass pipeline_id."""
    try:
        yield
    except StageNotFound as e:
        home = pipelines_q.stage_home(uow.conn, uow.org_id, e.entity_id)
        if home is None:
            raise
        raise DomainError(f"stage {e.entity_id} ('{home['stage_name']}') belongs to pipeline '{home['pipeline_name']}'"
                          f" ({home['pipeline_id']}); give that pipeline_id too to move the deal there",
                          field=e.field) from None


def _move(deal: Deal, cmd: MoveStage, uow: UnitOfWork) -> None:
    with stage_of_another_pipeline(uow):
        deal.move_to(load_pipeline(uow, cmd.pipeline_id or deal.pipeline_id), cmd.stage_id)


deal_command("move_stage", MoveStage, _move, row=True)


deals.assignment(label="Deal", assign_doc="Make a user the deal's owner (user_id from crm_users_list).",
                 unassign_doc="Leave a deal without an owner.", reads=DEAL_READS)


class DeleteDeal(Command, kw_only=True):
    """Delete a deal: it leaves lists, boards and statistics; its history stays in the audit trail."""

    deal_id: DealId


deals.delete(DeleteDeal)


# -- service lines ---------------------------------------------------------------------------------------
class AddService(Command, kw_only=True):
    """Add a catalog service (crm_services_search) to a deal as a line with quantity, price (default the catalog's) and
    discount; the deal's value follows its lines unless set by hand."""

    deal_id: DealId
    service_id: Annotated[UUID, Meta(description="Catalog service id (crm_services_search).")]
    quantity: Quantity = Decimal(1)
    unit_price: Annotated[Decimal | None, Meta(description="Price per unit; default the catalog price.",
                                               **decimal_range(0, MAX_AMOUNT))] = None
    discount_percent: Percent = Decimal(0)


def _add_service(deal: Deal, cmd: AddService, uow: UnitOfWork) -> None:
    service = uow.get(CatalogService, cmd.service_id, field="service_id")
    price = None if cmd.unit_price is None else to_cents(cmd.unit_price, field="unit_price")
    deal.add_service(service, cmd.quantity, price, cmd.discount_percent)


deal_command("add_service", AddService, _add_service, shows=SHOWS_LINES)


class UpdateService(Command, kw_only=True):
    """Change a deal's service line: quantity, unit price, discount."""

    deal_id: DealId
    line_id: LineId
    quantity: Quantity | UnsetType = UNSET
    unit_price: AmountArg | UnsetType = UNSET
    discount_percent: Percent | UnsetType = UNSET


def _update_service(deal: Deal, cmd: UpdateService, uow: UnitOfWork) -> None:
    deal.update_service(
        cmd.line_id, quantity=None if cmd.quantity is UNSET else cmd.quantity,
        unit_price_cents=None if cmd.unit_price is UNSET else to_cents(cmd.unit_price, field="unit_price"),
        discount_percent=None if cmd.discount_percent is UNSET else cmd.discount_percent,
    )


deal_command("update_service", UpdateService, _update_service, shows=SHOWS_LINES)


class RemoveService(Command, kw_only=True):
    """Remove a service line from a deal."""

    deal_id: DealId
    line_id: LineId


deal_command("remove_service", RemoveService, lambda d, cmd, uow: d.remove_service(cmd.line_id), destructive=True,
             shows=SHOWS_LINES)


# -- contacts --------------------------------------------------------------------------------------------
def _deal_client(uow: UnitOfWork, deal: Deal) -> Client:
    """The deal's client, following merges (a merged duplicate's deals belong to the survivor)."""
    if deal.client_id is None:
        raise DomainError("the deal has no client to take contacts from", field="deal_id")
    client_id = deal.client_id
    for _ in range(10):
        try:
            client = uow.store.repository.get(client_id)
        except AggregateNotFoundError:
            break
        if getattr(client, "merged_into", None) is None:
            client.ensure_usable(uow.org_id)
            return client
        client_id = client.merged_into
    raise NotFound("client", deal.client_id, field="deal_id")


class AddDealContact(Command, kw_only=True):
    """Link a contact person of the deal's client to the deal (contact ids from crm_clients_list_contacts)."""

    deal_id: DealId
    contact_id: UUID
    role: Annotated[str, Meta(max_length=100, description="Their role in this deal, e.g. 'decision maker'.")] | None = None


def _add_contact(deal: Deal, cmd: AddDealContact, uow: UnitOfWork) -> None:
    client = _deal_client(uow, deal)
    contact = client.contacts.get(str(cmd.contact_id))
    if contact is None:
        raise NotFound("contact", cmd.contact_id, field="contact_id")
    deal.add_contact(deal.client_id, contact, cmd.role)


deal_command("add_contact", AddDealContact, _add_contact, shows=SHOWS_CONTACTS)


class RemoveDealContact(Command, kw_only=True):
    """Unlink a contact person from a deal (it stays on the client)."""

    deal_id: DealId
    contact_id: UUID


deal_command("remove_contact", RemoveDealContact, lambda d, cmd, uow: d.remove_contact(cmd.contact_id),
             destructive=True, shows=SHOWS_CONTACTS)


# -- commissions -----------------------------------------------------------------------------------------
class SetCommission(Command, kw_only=True):
    """Set a user's commission on a deal: `percent` of its value or a fixed `amount` (not both); replaces an earlier
    one."""

    deal_id: DealId
    user_id: Annotated[UUID, Meta(description="From crm_users_list.")]
    percent: Percent | None = None
    amount: Annotated[Decimal | None, Meta(description="Fixed amount in the organization's currency, e.g. \"500\".",
                                           **decimal_range(0, MAX_AMOUNT))] = None


def _set_commission(deal: Deal, cmd: SetCommission, uow: UnitOfWork) -> None:
    ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
    deal.set_commission(cmd.user_id, percent=cmd.percent,
                        amount_cents=None if cmd.amount is None else to_cents(cmd.amount, field="amount"))


deal_command("set_commission", SetCommission, _set_commission, shows=SHOWS_COMMISSIONS)


class RemoveCommission(Command, kw_only=True):
    """Remove a user's commission from a deal."""

    deal_id: DealId
    user_id: UUID


deal_command("remove_commission", RemoveCommission, lambda d, cmd, uow: d.remove_commission(cmd.user_id),
             destructive=True, shows=SHOWS_COMMISSIONS)


# -- notes -----------------------------------------------------------------------------------------------
deals.notes(subject_type="deal", add_doc="Add a note to a deal; it also appears on the deal's and the client's timeline.")
