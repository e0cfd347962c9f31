"""Invoices from FattureInCloud: the `crm_invoices_*` tools (read, sync queue, allocation to deals and clients).

Invoices are synced by a background worker (application/invoice_sync.py) once an admin connected FattureInCloud
(`crm_settings_update_organization`, field `fattureincloud`). Amounts are exact, in each invoice's own currency.
An invoice's allocations name deals and clients: their titles and names are shown when the caller may read deals
and clients, otherwise left out and listed in `omitted` (ids always show).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application import invoice_sync
from application.money import AmountArg, Money, money
from application.organization import org_today
from application.runner import QueryContext, UnitOfWork
from application.settings_changes import admin_transaction
from application.shapes import Command, Limit, ListQuery, Page, Query, SearchText
from application.toolset import Toolset
from domain.errors import DomainError, NotFound
from domain.invoices import STATUSES, Invoice, score_deal
from domain.money import to_cents
from projections import clients as clients_q
from projections import deals as deals_q
from projections import invoices as invoices_q

InvoiceId = Annotated[UUID, Meta(description="An invoice id (from crm_invoices_list or crm_invoices_search).")]
QueueItemId = Annotated[UUID, Meta(description="A sync queue item id (from crm_invoices_list_queue or crm_invoices_sync).")]
AllocationId = Annotated[UUID, Meta(description="An allocation id (from crm_invoices_get).")]
Status = Literal[STATUSES]  # type: ignore[valid-type]
QueueState = Literal[invoice_sync.STATES]  # type: ignore[valid-type]


# -- outputs -----------------------------------------------------------------------------------------------
class InvoiceSummary(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    number: Annotated[str | None, Meta(description="As printed, e.g. '12/A'.")] = None
    date: date | None = None
    client_name: str | None = None
    client_vat: str | None = None
    subject: str | None = None
    currency: str
    net: Money
    vat: Money
    gross: Annotated[Money, Meta(description="The invoice total, VAT included.")]
    due: Annotated[Money, Meta(description="What the client pays: the instalments (gross less any withholding).")]
    paid: Money
    outstanding: Money
    allocated: Annotated[Money, Meta(description="How much of the gross is allocated to deals/clients.")]
    status: Status
    next_due_date: date | None = None
    pdf_url: Annotated[str | None, Meta(description="The PDF on FattureInCloud (a temporary link).")] = None
    e_invoice_status: str | None = None
    fattureincloud_id: int
    updated_at: datetime


class LineOut(Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    code: str | None = None
    description: str | None = None
    quantity: Decimal
    unit_price: Money
    discount_percent: Decimal
    vat_percent: Decimal
    net: Money


class VatOut(Struct, kw_only=True):
    vat_percent: Decimal
    taxable: Money
    vat: Money


class PaymentOut(Struct, kw_only=True, omit_defaults=True):
    due_date: date | None = None
    amount: Money
    status: Literal["paid", "not_paid", "reversed"]
    paid_date: date | None = None


class AllocationOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    deal_id: UUID | None = None
    deal_title: str | None = None
    client_id: UUID | None = None
    client_name: str | None = None
    amount: Money
    note: str | None = None
    created_by: UUID | None = None
    created_by_name: str | None = None
    created_at: datetime


class InvoiceDetail(InvoiceSummary, kw_only=True, omit_defaults=True):
    remaining: Annotated[Money, Meta(description="What can still be allocated.")]
    lines: list[LineOut]
    vat_breakdown: list[VatOut]
    payments: list[PaymentOut]
    allocations: list[AllocationOut]
    omitted: Annotated[list[str], Meta(description="What was left out because the token may not read it.")] = []


def _summary_dict(row: dict[str, Any]) -> dict[str, Any]:
    c = row["currency"]
    return {
        "id": row["id"], "number": row["full_number"], "date": row["date"], "client_name": row["client_name"],
        "client_vat": row["client_vat"], "subject": row["subject"], "currency": c,
        "net": money(row["net_cents"], c), "vat": money(row["vat_cents"], c), "gross": money(row["gross_cents"], c),
        "due": money(row["due_cents"], c), "paid": money(row["paid_cents"], c),
        "outstanding": money(max(0, row["due_cents"] - row["paid_cents"]) if row["status"] != "cancelled" else 0, c),
        "allocated": money(row["allocated_cents"], c), "status": row["status"], "next_due_date": row["next_due_date"],
        "pdf_url": row["pdf_url"], "e_invoice_status": row["e_invoice_status"], "fattureincloud_id": row["external_id"],
        "updated_at": row["updated_at"],
    }


def _summary(row: dict[str, Any]) -> InvoiceSummary:
    return InvoiceSummary(**_summary_dict(row))


def present_invoice(ctx: QueryContext, invoice_id: UUID) -> InvoiceDetail:
    row = invoices_q.get_invoice(ctx.conn, ctx.org_id, invoice_id)
    c = row["currency"]
    deals_ok, clients_ok = ctx.principal.can("deals", "read"), ctx.principal.can("clients", "read")
    allocations = []
    for a in row["allocations"]:
        allocations.append(AllocationOut(
            id=a["id"], deal_id=a["deal_id"], deal_title=a["deal_title"] if deals_ok else None,
            client_id=a["client_id"], client_name=a["client_name"] if clients_ok else None,
            amount=money(a["amount_cents"], c), note=a["note"], created_by=a["created_by"],
            created_by_name=a["created_by_name"], created_at=a["created_at"]))
    omitted = []
    if any(a["deal_id"] for a in row["allocations"]) and not deals_ok:
        omitted.append("deal titles of allocations (needs deals:read)")
    if any(a["client_id"] for a in row["allocations"]) and not clients_ok:
        omitted.append("client names of allocations (needs clients:read)")
    return InvoiceDetail(
        **_summary_dict(row), remaining=money(max(0, row["gross_cents"] - row["allocated_cents"]), c),
        lines=[LineOut(name=l.get("name"), code=l.get("code"), description=l.get("description"),
                       quantity=Decimal(l.get("qty") or "1"), unit_price=money(l.get("net_price_cents"), c),
                       discount_percent=Decimal(l.get("discount_percent") or "0"),
                       vat_percent=Decimal(l.get("vat_percent") or "0"), net=money(l.get("net_cents"), c))
               for l in row["lines"]],
        vat_breakdown=[VatOut(vat_percent=Decimal(v["vat_percent"]), taxable=money(v["taxable_cents"], c),
                              vat=money(v["vat_cents"], c)) for v in row["vat_breakdown"]],
        payments=[PaymentOut(due_date=p["due_date"], amount=money(p["amount_cents"], c), status=p["status"],
                             paid_date=p["paid_date"]) for p in row["payments"]],
        allocations=allocations, omitted=omitted)


invoices = Toolset(
    "invoices", title="Invoices",
    description="Invoices from FattureInCloud: sync queue, search, payment status, allocation to deals and clients, "
                "totals",
    aggregate=Invoice, id_field="invoice_id", id_type=InvoiceId, output=InvoiceDetail, present=present_invoice,
    exists=invoices_q.invoice_exists, subject="an invoice",
)


# -- reading -----------------------------------------------------------------------------------------------
class GetInvoice(Query, kw_only=True):
    """One invoice with its lines, VAT breakdown, totals, instalments (due dates, paid or not), allocations to deals
    and clients, and the link to its PDF on FattureInCloud."""

    invoice_id: InvoiceId


invoices.get(GetInvoice)


Sort = Literal["date_desc", "date_asc", "due_asc", "amount_desc"]


class ListInvoices(ListQuery, kw_only=True):
    """Invoices synced from FattureInCloud, newest first: filter by payment status (open = unpaid or partially
    paid), client name or VAT number, date range, overdue, and whether or to what they are allocated. Pages with
    cursor/next_cursor. For words or numbers, crm_invoices_search."""

    status: Annotated[Status | Literal["open"] | None, Meta(description="paid, unpaid, partially_paid, cancelled, or open.")] = None
    client: Annotated[str, Meta(min_length=1, max_length=200, description="Part of the client's name.")] | None = None
    client_vat: Annotated[str, Meta(min_length=2, max_length=30, description="The client's VAT number.")] | None = None
    date_from: Annotated[date | None, Meta(description="Dated on or after (YYYY-MM-DD).")] = None
    date_to: Annotated[date | None, Meta(description="Dated on or before (YYYY-MM-DD).")] = None
    overdue: Annotated[bool, Meta(description="Only invoices with an unpaid instalment due before today.")] = False
    allocated: Annotated[bool | None, Meta(description="true: allocated at least in part; false: not at all.")] = None
    deal_id: Annotated[UUID | None, Meta(description="Only invoices allocated to this deal.")] = None
    client_id: Annotated[UUID | None, Meta(description="Only invoices allocated to this CRM client.")] = None
    sort: Sort = "date_desc"


def _filters(ctx: QueryContext, q: Any) -> dict[str, Any]:
    return {"status": getattr(q, "status", None), "client_name": getattr(q, "client", None),
            "client_vat": getattr(q, "client_vat", None), "date_from": q.date_from, "date_to": q.date_to,
            "allocated": getattr(q, "allocated", None), "deal_id": getattr(q, "deal_id", None),
            "client_id": getattr(q, "client_id", None),
            "overdue_on": org_today(ctx.conn, ctx.org_id) if getattr(q, "overdue", False) else None}


@invoices.query("list", output=Page[InvoiceSummary])
def list_invoices(q: ListInvoices, ctx: QueryContext) -> Page[InvoiceSummary]:
    rows, cursor = invoices_q.list_invoices(ctx.conn, ctx.org_id, filters=_filters(ctx, q), sort=q.sort, limit=q.limit,
                                            cursor=q.cursor)
    return Page(items=[_summary(r) for r in rows], next_cursor=cursor)


class InvoiceHit(InvoiceSummary, kw_only=True, omit_defaults=True):
    score: Annotated[float, Meta(description="Higher is better: an exact number or VAT match scores 2 or more.")]


class InvoiceSearchResult(Struct, kw_only=True):
    items: list[InvoiceHit]


class SearchInvoices(Query, kw_only=True):
    """Search invoices by number ('12' or '12/A'), client VAT number, or words of the client's name and the subject
    (accents and case ignored, word beginnings match). Best match first."""

    q: SearchText
    limit: Limit = 25


@invoices.query("search", output=InvoiceSearchResult)
def search_invoices(q: SearchInvoices, ctx: QueryContext) -> InvoiceSearchResult:
    rows = invoices_q.search_invoices(ctx.conn, ctx.org_id, q.q, limit=q.limit)
    return InvoiceSearchResult(items=[InvoiceHit(**_summary_dict(r), score=round(r["score"], 4)) for r in rows])


class ListUnallocated(ListQuery, kw_only=True):
    """Invoices not yet (fully) allocated to a deal or client, cancelled ones left out, newest first: the work list
    for crm_invoices_suggest_allocation and crm_invoices_allocate."""

    date_from: Annotated[date | None, Meta(description="Dated on or after (YYYY-MM-DD).")] = None
    date_to: Annotated[date | None, Meta(description="Dated on or before (YYYY-MM-DD).")] = None


@invoices.query("list_unallocated", output=Page[InvoiceSummary])
def list_unallocated(q: ListUnallocated, ctx: QueryContext) -> Page[InvoiceSummary]:
    rows, cursor = invoices_q.list_invoices(ctx.conn, ctx.org_id, filters={**_filters(ctx, q), "unallocated": True},
                                            limit=q.limit, cursor=q.cursor)
    return Page(items=[_summary(r) for r in rows], next_cursor=cursor)


class TotalsRow(Struct, kw_only=True, omit_defaults=True):
    currency: str
    client_name: str | None = None
    client_vat: str | None = None
    invoices: int
    invoiced: Money
    paid: Money
    outstanding: Money
    overdue: Annotated[Money, Meta(description="Unpaid instalments whose due date is before today.")]


class Totals(Struct, kw_only=True):
    date_from: date
    date_to: date
    today: Annotated[date, Meta(description="The organization's today: what 'overdue' is measured against.")]
    totals: Annotated[list[TotalsRow], Meta(description="Per currency; with by_client, per client and currency.")]


class InvoiceTotals(Query, kw_only=True):
    """Invoiced, paid, outstanding and overdue amounts of the invoices dated in a period (default: this year so far),
    overall or per client (by_client), per currency; cancelled invoices are left out."""

    date_from: Annotated[date | None, Meta(description="Default: January 1st of this year.")] = None
    date_to: Annotated[date | None, Meta(description="Default: today.")] = None
    by_client: bool = False
    client_vat: Annotated[str, Meta(min_length=2, max_length=30, description="Only this client's invoices.")] | None = None
    limit: Annotated[int, Meta(ge=1, le=500, description="Rows at most (per-client lists).")] = 100


@invoices.query("totals", output=Totals)
def invoice_totals(q: InvoiceTotals, ctx: QueryContext) -> Totals:
    today = org_today(ctx.conn, ctx.org_id)
    date_from = q.date_from or today.replace(month=1, day=1)
    date_to = q.date_to or today
    if date_from > date_to:
        raise DomainError("date_from is after date_to", field="date_from")
    rows = invoices_q.totals(ctx.conn, ctx.org_id, date_from=date_from, date_to=date_to, today=today,
                             by_client=q.by_client, client_vat=q.client_vat, limit=q.limit)
    return Totals(date_from=date_from, date_to=date_to, today=today, totals=[TotalsRow(
        currency=r["currency"], client_name=r.get("client_name"), client_vat=r.get("client_vat"), invoices=r["invoices"],
        invoiced=money(r["invoiced_cents"], r["currency"]), paid=money(r["paid_cents"], r["currency"]),
        outstanding=money(r["outstanding_cents"], r["currency"]), overdue=money(r["overdue_cents"], r["currency"]))
        for r in rows])


# -- the sync queue ----------------------------------------------------------------------------------------
class ProgressOut(Struct, kw_only=True, omit_defaults=True):
    pages_done: int = 0
    pages_total: int | None = None
    documents_done: int = 0
    documents_total: int | None = None
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: Annotated[int, Meta(description="Invoices FattureInCloud no longer lists (now cancelled).")] = 0
    skipped: Annotated[int, Meta(description="Documents that could not be imported (amounts out of range, no id).")] = 0
    skipped_ids: list[int] = []


class QueueItemOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    kind: Literal["range", "document"]
    date_from: date | None = None
    date_to: date | None = None
    document_id: int | None = None
    state: QueueState
    attempts: int
    next_attempt_at: Annotated[datetime | None, Meta(description="When a queued item runs (after a back-off or Retry-After).")] = None
    progress: ProgressOut
    last_error: str | None = None
    cancel_requested: bool = False
    requested_by: UUID | None = None
    requested_by_name: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class QueueItemResult(QueueItemOut, kw_only=True, omit_defaults=True):
    already_queued: Annotated[bool, Meta(description="An identical sync was already queued or running: this is it.")] = False


def _queue_item(row: dict[str, Any]) -> QueueItemOut:
    data = {k: v for k, v in row.items() if k != "next_page"}
    if row["state"] != "queued":
        data["next_attempt_at"] = None
    return msgspec.convert(data, QueueItemOut)


class Enqueued(Struct, kw_only=True):
    item_id: UUID
    new: bool


def present_enqueued(ctx: QueryContext, result: Enqueued) -> QueueItemResult:
    item = invoice_sync.get_item(ctx.conn, ctx.org_id, result.item_id)
    return QueueItemResult(**msgspec.structs.asdict(_queue_item(item)), already_queued=not result.new)


class SyncInvoices(Command, kw_only=True):
    """Queue a sync of issued invoices from FattureInCloud for a date range (default: from January 1st of last year
    to today), or of one document (document_id). A background worker fetches them, retrying when FattureInCloud is
    busy; follow it with crm_invoices_list_queue. Syncing twice never duplicates an invoice."""

    date_from: Annotated[date | None, Meta(description="Invoices dated on or after (YYYY-MM-DD).")] = None
    date_to: Annotated[date | None, Meta(description="Invoices dated on or before (YYYY-MM-DD).")] = None
    document_id: Annotated[int, Meta(ge=1, le=2**53, description="One FattureInCloud document id instead of a range.")] | None = None


@invoices.command("sync", output=QueueItemResult, returns=Enqueued, present=present_enqueued, open_world=True)
def sync_invoices(cmd: SyncInvoices, uow: UnitOfWork) -> Enqueued:
    with admin_transaction(uow, "crm_invoices_sync", cmd) as tx:
        invoice_sync.require_connection(tx.conn, uow.org_id)
        if cmd.document_id is not None:
            if cmd.date_from is not None or cmd.date_to is not None:
                raise DomainError("give either document_id or a date range", field="document_id")
            kind, date_from, date_to = "document", None, None
        else:
            today = org_today(tx.conn, uow.org_id)
            date_from = cmd.date_from or date(today.year - 1, 1, 1)
            date_to = cmd.date_to or today
            if date_from > date_to:
                raise DomainError("date_from is after date_to", field="date_from")
            if date_to - date_from > timedelta(days=3660):
                raise DomainError("a sync covers at most 10 years; split it", field="date_from")
            kind = "range"
        item_id, new = invoice_sync.enqueue(tx.conn, uow.org_id, kind=kind, date_from=date_from, date_to=date_to,
                                            document_id=cmd.document_id, requested_by=uow.principal.user_id)
        result = Enqueued(item_id=item_id, new=new)
        tx.returned.append(result)
    return result


class ListQueue(ListQuery, kw_only=True):
    """Sync queue items, newest first, with their state (queued, running, done, failed, cancelled), progress while
    running (pages and documents done, created/updated/unchanged), attempts and last error."""

    state: QueueState | None = None


@invoices.query("list_queue", output=Page[QueueItemOut])
def list_queue(q: ListQueue, ctx: QueryContext) -> Page[QueueItemOut]:
    rows, cursor = invoice_sync.list_items(ctx.conn, ctx.org_id, state=q.state, limit=q.limit, cursor=q.cursor)
    return Page(items=[_queue_item(r) for r in rows], next_cursor=cursor)


def present_item(ctx: QueryContext, item_id: UUID) -> QueueItemOut:
    return _queue_item(invoice_sync.get_item(ctx.conn, ctx.org_id, item_id))


class RetryQueueItem(Command, kw_only=True):
    """Run a failed (or cancelled) sync item again, from where it stopped; e.g. after fixing the access token."""

    queue_item_id: QueueItemId


@invoices.command("retry_queue_item", output=QueueItemOut, returns=UUID, present=present_item, open_world=True)
def retry_queue_item(cmd: RetryQueueItem, uow: UnitOfWork) -> UUID:
    with admin_transaction(uow, "crm_invoices_retry_queue_item", cmd) as tx:
        invoice_sync.retry(tx.conn, uow.org_id, cmd.queue_item_id)
        tx.returned.append(cmd.queue_item_id)
    return cmd.queue_item_id


class CancelQueueItem(Command, kw_only=True):
    """Cancel a queued sync item; a running one stops after the page it is on (invoices already imported stay)."""

    queue_item_id: QueueItemId


@invoices.command("cancel_queue_item", output=QueueItemOut, returns=UUID, present=present_item, destructive=True)
def cancel_queue_item(cmd: CancelQueueItem, uow: UnitOfWork) -> UUID:
    with admin_transaction(uow, "crm_invoices_cancel_queue_item", cmd) as tx:
        invoice_sync.cancel(tx.conn, uow.org_id, cmd.queue_item_id)
        tx.returned.append(cmd.queue_item_id)
    return cmd.queue_item_id


# -- allocation --------------------------------------------------------------------------------------------
class Candidate(Struct, kw_only=True, omit_defaults=True):
    kind: Literal["deal", "client"]
    deal_id: UUID | None = None
    deal_title: str | None = None
    deal_status: str | None = None
    client_id: UUID | None = None
    client_name: str | None = None
    open_amount: Annotated[Money | None, Meta(description="A deal's value not yet allocated.")] = None
    score: Annotated[int, Meta(description="0-100: VAT number 50, amount 30, dates 15, won 5.")]
    reasons: list[str]


class Suggestions(Struct, kw_only=True):
    invoice_id: UUID
    remaining: Money
    candidates: list[Candidate]


class SuggestAllocation(Query, kw_only=True):
    """Candidate deals (and clients) for an invoice's remaining amount, best first, each with its reasons: the
    client's VAT number, how close the deal's open amount is, and the deal's dates. Then crm_invoices_allocate."""

    invoice_id: InvoiceId
    limit: Annotated[int, Meta(ge=1, le=20)] = 5


@invoices.query("suggest_allocation", output=Suggestions, reads=("deals", "clients"))
def suggest_allocation(q: SuggestAllocation, ctx: QueryContext) -> Suggestions:
    row = invoices_q.get_invoice(ctx.conn, ctx.org_id, q.invoice_id)
    currency = row["currency"]
    remaining = max(0, row["gross_cents"] - row["allocated_cents"])
    invoice = {"client_vat": row["client_vat"], "date": row["date"], "currency": currency}
    scored = []
    for deal in invoices_q.candidate_deals(ctx.conn, ctx.org_id, client_vat=row["client_vat"], currency=currency,
                                           remaining_cents=remaining):
        score, reasons = score_deal(invoice, deal, remaining_cents=remaining)
        scored.append(Candidate(kind="deal", deal_id=deal["id"], deal_title=deal["title"], deal_status=deal["status"],
                                client_id=deal["client_id"], client_name=deal["client_name"],
                                open_amount=money(max(0, deal["open_cents"]), currency), score=score, reasons=reasons))
    for client in invoices_q.candidate_clients(ctx.conn, ctx.org_id, row["client_vat"]):
        scored.append(Candidate(kind="client", client_id=client["id"], client_name=client["business_name"], score=50,
                                reasons=[f"the client has the invoice's VAT number ({row['client_vat']})"]))
    scored.sort(key=lambda c: (-c.score, c.kind != "deal", str(c.deal_id or c.client_id)))
    return Suggestions(invoice_id=row["id"], remaining=money(remaining, currency), candidates=scored[:q.limit])


class AllocateInvoice(Command, kw_only=True):
    """Allocate an invoice, or part of its amount, to a deal (and so its client) or to a client. The allocations of
    an invoice never exceed its gross amount: a larger amount is refused with what remains. Default amount: all
    that remains. crm_invoices_suggest_allocation proposes candidates."""

    invoice_id: InvoiceId
    deal_id: Annotated[UUID | None, Meta(description="The deal (crm_deals_list); its currency must be the invoice's.")] = None
    client_id: Annotated[UUID | None, Meta(description="The client (crm_clients_search); with deal_id, the deal's client.")] = None
    amount: AmountArg | None = None
    note: Annotated[str, Meta(max_length=1000)] | None = None


@invoices.command("allocate", output=InvoiceDetail, returns=UUID, present=present_invoice, reads=("deals", "clients"))
def allocate(cmd: AllocateInvoice, uow: UnitOfWork) -> UUID:
    invoice = uow.get(Invoice, cmd.invoice_id, field="invoice_id")
    client_id = cmd.client_id
    if cmd.deal_id is not None:
        try:
            deal = deals_q.get_deal(uow.conn, uow.org_id, cmd.deal_id)
        except NotFound:
            raise NotFound("deal", cmd.deal_id, field="deal_id") from None
        if deal["currency"] != invoice.currency:
            raise DomainError(f"the deal is in {deal['currency']} and the invoice in {invoice.currency}; allocate "
                              "to deals in the invoice's currency", field="deal_id")
        if client_id is not None and deal["client_id"] != client_id:
            raise DomainError("the deal belongs to another client; give only the deal_id", field="client_id")
        client_id = deal["client_id"]
    elif client_id is not None and not clients_q.client_exists(uow.conn, uow.org_id, client_id):
        raise NotFound("client", client_id, field="client_id")
    amount = None if cmd.amount is None else to_cents(cmd.amount, field="amount")
    invoice.allocate(deal_id=cmd.deal_id, client_id=client_id, amount_cents=amount, note=cmd.note,
                     allocated_by=uow.principal.user_id)
    return invoice.id


class UnallocateInvoice(Command, kw_only=True):
    """Remove one allocation of an invoice (its amount becomes unallocated again)."""

    allocation_id: AllocationId


@invoices.command("unallocate", output=InvoiceDetail, returns=UUID, present=present_invoice, destructive=True)
def unallocate(cmd: UnallocateInvoice, uow: UnitOfWork) -> UUID:
    found = invoices_q.get_allocation(uow.conn, uow.org_id, cmd.allocation_id)
    if found is None:
        raise NotFound("allocation", cmd.allocation_id, field="allocation_id")
    invoice = uow.get(Invoice, found["invoice_id"], field="allocation_id")
    invoice.unallocate(cmd.allocation_id)
    return invoice.id
