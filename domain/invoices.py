"""Invoices issued in FattureInCloud, mirrored here, and their allocation to deals and clients.

An `Invoice` aggregate is identified by (organization, FattureInCloud company, document id), so importing a
document twice finds the same aggregate: a sync is idempotent. What FattureInCloud says about the document is
its *snapshot* (`normalize` turns the API's JSON into it: amounts in integer cents of the invoice's currency,
dates as ISO strings, texts made storable); a later sync that finds a different snapshot records
`UpstreamChanged` with the fields that changed (amounts, lines, payments and so the paid status), a document gone
from FattureInCloud records `RemovedUpstream` (it counts as cancelled) and one that comes back `Restored`.

Allocations are the CRM's own: an invoice, or part of its amount, attributed to a deal (and so its client) or
to a client. Their sum never exceeds the invoice's gross amount; a refusal names the remaining amount.
`score_deal` ranks candidate deals for `crm_invoices_suggest_allocation`, each point with its reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.clients import vat_key
from domain.errors import Conflict, DomainError, NotFound
from domain.money import format_money
from domain.values import MAX_MINOR_UNITS, date_problem

SOURCE = "fattureincloud"
STATUSES = ("unpaid", "partially_paid", "paid", "cancelled")
PAYMENT_STATUSES = ("paid", "not_paid", "reversed")
MAX_LINES = 500
MAX_PAYMENTS = 100
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def invoice_id(org_id: UUID, company_id: int, external_id: int) -> UUID:
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:{SOURCE}:{company_id}:{external_id}")


class UpstreamDocumentInvalid(DomainError):
    code = "invalid_upstream_document"


class AllocationNotFound(NotFound):
    def __init__(self, allocation_id: object) -> None:
        super().__init__("allocation", allocation_id, field="allocation_id")


class OverAllocated(Conflict):
    code = "over_allocation"


# -- the upstream document --------------------------------------------------------------------------------
def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = _UNSTORABLE.sub("", str(value)).strip()
    return text[:limit] or None


def _cents(value: Any, *, field: str, signed: bool = False) -> int:
    if value is None:
        return 0
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise UpstreamDocumentInvalid(f"{field} is not a number", field=field) from None
    if not amount.is_finite():
        raise UpstreamDocumentInvalid(f"{field} is not a finite number", field=field)
    cents = int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if not (-MAX_MINOR_UNITS if signed else 0) <= cents <= MAX_MINOR_UNITS:
        raise UpstreamDocumentInvalid(f"{field} is outside the amounts the CRM stores", field=field)
    return cents


def _decimal_text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) > Decimal(10) ** 12:
        return None
    return format(number.quantize(Decimal("0.000001")).normalize(), "f")


def _day(value: Any) -> str | None:
    if value is None:
        return None
    try:
        day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    except ValueError:
        return None
    return None if date_problem(day) else day.isoformat()


def normalize(document: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot of a FattureInCloud issued document (its API JSON): what the CRM keeps and compares."""
    external = document.get("id")
    if not isinstance(external, int) or isinstance(external, bool) or not 0 < external < 2**63:
        raise UpstreamDocumentInvalid("the document has no valid id", field="id")
    entity = document.get("entity") or {}
    currency = (document.get("currency") or {}).get("id") or "EUR"
    if not re.fullmatch(r"[A-Z]{3}", str(currency)):
        raise UpstreamDocumentInvalid("the document's currency is not an ISO code", field="currency")
    lines = []
    breakdown: dict[str, dict[str, int | str]] = {}
    for i, item in enumerate((document.get("items_list") or [])[:MAX_LINES]):
        qty = _decimal_text(item.get("qty")) or "1"
        net_price = _cents(item.get("net_price"), field=f"items_list[{i}].net_price", signed=True)
        discount = _decimal_text(item.get("discount")) or "0"
        vat = item.get("vat") or {}
        vat_percent = _decimal_text(vat.get("value")) or "0"
        net = int((Decimal(qty) * net_price * (1 - Decimal(discount) / 100)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        if abs(net) > MAX_MINOR_UNITS:
            raise UpstreamDocumentInvalid(f"items_list[{i}] is outside the amounts the CRM stores", field="items_list")
        lines.append({"name": _text(item.get("name"), 500), "code": _text(item.get("code"), 100),
                      "description": _text(item.get("description"), 5000), "qty": qty,
                      "net_price_cents": net_price, "discount_percent": discount, "vat_percent": vat_percent,
                      "net_cents": net})
        row = breakdown.setdefault(vat_percent, {"vat_percent": vat_percent, "taxable_cents": 0, "vat_cents": 0})
        row["taxable_cents"] = int(row["taxable_cents"]) + net
        row["vat_cents"] = int((Decimal(int(row["taxable_cents"])) * Decimal(vat_percent) / 100).quantize(
            Decimal(1), rounding=ROUND_HALF_UP))
    gross = _cents(document.get("amount_gross"), field="amount_gross")
    payments = []
    for i, p in enumerate((document.get("payments_list") or [])[:MAX_PAYMENTS]):
        status = p.get("status") if p.get("status") in PAYMENT_STATUSES else "not_paid"
        payments.append({"due_date": _day(p.get("due_date")), "amount_cents": _cents(p.get("amount"),
                         field=f"payments_list[{i}].amount"), "status": status,
                         "paid_date": _day(p.get("paid_date")) if status == "paid" else None})
    due = sum(p["amount_cents"] for p in payments if p["status"] != "reversed") if payments else gross
    paid = sum(p["amount_cents"] for p in payments if p["status"] == "paid")
    number = document.get("number") if isinstance(document.get("number"), int) else None
    numeration = _text(document.get("numeration"), 50)
    unpaid_dues = sorted(p["due_date"] for p in payments if p["status"] == "not_paid" and p["due_date"])
    return {
        "kind": "invoice",
        "number": number if number is None or abs(number) < 2**31 else None,
        "numeration": numeration,
        "full_number": f"{number}{numeration or ''}" if number is not None else None,
        "date": _day(document.get("date")),
        "currency": currency,
        "client": {
            "external_id": entity.get("id") if isinstance(entity.get("id"), int) and 0 < entity["id"] < 2**63 else None,
            "name": _text(entity.get("name"), 500),
            "vat_number": _text(entity.get("vat_number"), 50),
            "tax_code": _text(entity.get("tax_code"), 50),
        },
        "subject": _text(document.get("visible_subject") or document.get("subject"), 2000),
        "net_cents": _cents(document.get("amount_net"), field="amount_net"),
        "vat_cents": _cents(document.get("amount_vat"), field="amount_vat"),
        "gross_cents": gross,
        "due_cents": min(due, MAX_MINOR_UNITS),
        "paid_cents": min(paid, MAX_MINOR_UNITS),
        "status": payment_status(min(due, MAX_MINOR_UNITS), paid),
        "next_due_date": unpaid_dues[0] if unpaid_dues else None,
        "lines": lines,
        "vat_breakdown": sorted(breakdown.values(), key=lambda r: Decimal(str(r["vat_percent"]))),
        "payments": payments,
        "pdf_url": _text(document.get("url"), 2000),
        "e_invoice_status": _text(document.get("ei_status"), 50),
    }


def payment_status(due_cents: int, paid_cents: int) -> str:
    if due_cents > 0 and paid_cents >= due_cents:
        return "paid"
    return "partially_paid" if paid_cents > 0 else "unpaid"


def snapshot_hash(snapshot: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- the aggregate -----------------------------------------------------------------------------------------
class Invoice(TenantAggregate):
    entity_name = "invoice"

    @staticmethod
    def create_id(org_id: UUID, company_id: int, external_id: int) -> UUID:
        return invoice_id(org_id, company_id, external_id)

    @event("Imported")
    def __init__(self, org_id: UUID, source: str, company_id: int, external_id: int, snapshot: dict[str, Any]) -> None:
        self.org_id = org_id
        self.source = source
        self.company_id = company_id
        self.external_id = external_id
        self.snapshot = dict(snapshot)
        self.removed = False
        self.allocations: dict[str, dict[str, Any]] = {}
        self.deleted = False

    @classmethod
    def import_document(cls, org_id: UUID, company_id: int, snapshot: dict[str, Any], external_id: int) -> Invoice:
        return cls(org_id=org_id, source=SOURCE, company_id=company_id, external_id=external_id, snapshot=snapshot)

    # -- upstream ----------------------------------------------------------------------------------------------
    def apply_upstream(self, snapshot: Mapping[str, Any]) -> None:
        """Record what changed in FattureInCloud since the last sync (nothing when nothing changed)."""
        if self.removed:
            self._restored()
        changes = {k: v for k, v in snapshot.items() if self.snapshot.get(k) != v}
        if changes:
            self._upstream_changed(changes=changes)

    @event("UpstreamChanged")
    def _upstream_changed(self, changes: dict[str, Any]) -> None:
        self.snapshot = {**self.snapshot, **changes}

    def mark_removed(self) -> None:
        if not self.removed:
            self._removed_upstream()

    @event("RemovedUpstream")
    def _removed_upstream(self) -> None:
        self.removed = True

    @event("Restored")
    def _restored(self) -> None:
        self.removed = False

    # -- amounts -----------------------------------------------------------------------------------------------
    @property
    def gross_cents(self) -> int:
        return int(self.snapshot.get("gross_cents") or 0)

    @property
    def currency(self) -> str:
        return str(self.snapshot.get("currency") or "EUR")

    @property
    def allocated_cents(self) -> int:
        return sum(int(a["amount_cents"]) for a in self.allocations.values())

    @property
    def remaining_cents(self) -> int:
        return max(0, self.gross_cents - self.allocated_cents)

    # -- allocation --------------------------------------------------------------------------------------------
    def allocate(self, *, deal_id: UUID | None, client_id: UUID | None, amount_cents: int | None, note: str | None,
                 allocated_by: UUID | None) -> UUID:
        """Attribute `amount_cents` (default: all that remains) to a deal and/or client; never beyond the invoice."""
        if deal_id is None and client_id is None:
            raise DomainError("give a deal_id or a client_id to allocate the invoice to", field="deal_id")
        if self.removed:
            raise Conflict("the invoice was removed from FattureInCloud (cancelled) and cannot be allocated",
                           field="invoice_id")
        remaining = self.remaining_cents
        if amount_cents is None:
            amount_cents = remaining
        if amount_cents <= 0 and remaining == 0:
            raise OverAllocated(f"the invoice is already fully allocated ({format_money(self.gross_cents, self.currency)}"
                                "); remove an allocation first (crm_invoices_unallocate)", field="amount")
        if amount_cents <= 0:
            raise DomainError("the amount must be more than zero", field="amount")
        if amount_cents > remaining:
            raise OverAllocated(
                f"the amount {format_money(amount_cents, self.currency)} exceeds what remains of the invoice: "
                f"{format_money(remaining, self.currency)} of {format_money(self.gross_cents, self.currency)}",
                field="amount")
        allocation_id = uuid4()
        self._allocated(allocation_id=allocation_id, deal_id=deal_id, client_id=client_id, amount_cents=amount_cents,
                        note=note, allocated_by=allocated_by)
        return allocation_id

    @event("Allocated")
    def _allocated(self, allocation_id: UUID, deal_id: UUID | None, client_id: UUID | None, amount_cents: int,
                   note: str | None, allocated_by: UUID | None) -> None:
        self.allocations = {**self.allocations, str(allocation_id): {
            "deal_id": deal_id, "client_id": client_id, "amount_cents": amount_cents}}

    def unallocate(self, allocation_id: UUID) -> None:
        if str(allocation_id) not in self.allocations:
            raise AllocationNotFound(allocation_id)
        self._unallocated(allocation_id=allocation_id)

    @event("Unallocated")
    def _unallocated(self, allocation_id: UUID) -> None:
        self.allocations = {k: v for k, v in self.allocations.items() if k != str(allocation_id)}


# -- suggestions -------------------------------------------------------------------------------------------
def _as_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value if not hasattr(value, "date") else value.date()  # datetimes too
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def score_deal(invoice: Mapping[str, Any], deal: Mapping[str, Any], *, remaining_cents: int) -> tuple[int, list[str]]:
    """How well a deal matches an invoice (0-100) and why: VAT number (50), amount (30), dates (15), won (5).

    `invoice`: client_vat, date, currency. `deal`: title, status, currency, client_vat, open_cents (its value less
    what is already allocated to it), close_date, expected_close_date, created_at."""
    reasons: list[str] = []
    score = 0
    currency = invoice.get("currency") or "EUR"
    invoice_vat, deal_vat = vat_key(invoice.get("client_vat")), vat_key(deal.get("client_vat"))
    if invoice_vat and invoice_vat == deal_vat:
        score += 50
        reasons.append(f"the deal's client has the invoice's VAT number ({invoice.get('client_vat')})")
    elif invoice_vat and deal_vat:
        reasons.append(f"the deal's client has another VAT number ({deal.get('client_vat')})")
    open_cents = int(deal.get("open_cents") or 0)
    if open_cents > 0 and remaining_cents > 0:
        closeness = 1 - abs(open_cents - remaining_cents) / max(open_cents, remaining_cents)
        points = round(30 * closeness) if closeness >= 0.5 else 0
        score += points
        if open_cents == remaining_cents:
            reasons.append(f"its open amount {format_money(open_cents, currency)} equals the invoice's remaining amount")
        elif points:
            reasons.append(f"its open amount {format_money(open_cents, currency)} is within "
                           f"{round((1 - closeness) * 100)}% of the invoice's remaining "
                           f"{format_money(remaining_cents, currency)}")
        else:
            reasons.append(f"its open amount {format_money(open_cents, currency)} is far from the invoice's remaining "
                           f"{format_money(remaining_cents, currency)}")
    elif open_cents <= 0:
        reasons.append("the deal has no open amount left to invoice")
    invoice_day = _as_date(invoice.get("date"))
    for label, key in (("closed", "close_date"), ("expected to close", "expected_close_date"), ("created", "created_at")):
        day = _as_date(deal.get(key))
        if day is None or invoice_day is None:
            continue
        days = (invoice_day - day).days
        distance = abs(days)
        points = 15 if distance <= 7 else 10 if distance <= 30 else 5 if distance <= 90 else 0
        score += points
        when = "the same day as" if days == 0 else (f"{distance} day(s) {'before' if days > 0 else 'after'}")
        reasons.append(f"{label} {when} the invoice date")
        break
    if deal.get("status") == "accepted":
        score += 5
        reasons.append("the deal is won")
    return min(score, 100), reasons
