"""Domain rules of invoices: the upstream document, changes from FattureInCloud, allocations and suggestions."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest

from domain.errors import DomainError
from domain.invoices import (AllocationNotFound, Invoice, OverAllocated, UpstreamDocumentInvalid, invoice_id, normalize,
                             score_deal, snapshot_hash)
from tests.fic_stub import document

ORG = uuid4()


def names(agg) -> list[str]:
    return [type(e).__qualname__ for e in agg.collect_events()]


def imported(**kw) -> Invoice:
    snapshot = normalize(document(7, day=date(2025, 3, 10), **kw))
    invoice = Invoice.import_document(ORG, 12345, snapshot, 7)
    invoice.collect_events()
    return invoice


def test_a_document_becomes_exact_cents_and_canonical_text():
    doc = document(7, day=date(2025, 3, 10), net="1234.56", instalments=3, numeration="/A")
    doc["items_list"][0]["name"] = "Consulenza\x00 \ud800tecnica"
    snap = normalize(doc)
    assert (snap["net_cents"], snap["vat_cents"], snap["gross_cents"]) == (123456, 27160, 150616)
    assert sum(p["amount_cents"] for p in snap["payments"]) == snap["due_cents"] == 150616
    assert snap["full_number"] == "7/A" and snap["status"] == "unpaid" and snap["next_due_date"] == "2025-04-09"
    assert snap["lines"][0]["name"] == "Consulenza tecnica"
    assert snap["vat_breakdown"] == [{"vat_percent": "22", "taxable_cents": 123456, "vat_cents": 27160}]
    assert snapshot_hash(snap) == snapshot_hash(normalize(doc))
    paid = normalize(document(8, day=date(2025, 3, 10), paid=True))
    assert paid["status"] == "paid" and paid["paid_cents"] == paid["due_cents"] and paid["next_due_date"] is None


@pytest.mark.parametrize("change", [{"id": None}, {"amount_gross": 1e20}, {"amount_gross": "abc"},
                                    {"currency": {"id": "euro"}}])
def test_unusable_documents_are_refused(change):
    with pytest.raises(UpstreamDocumentInvalid):
        normalize({**document(7, day=date(2025, 3, 10)), **change})


def test_same_id_for_the_same_document_and_upstream_changes_become_events():
    invoice = imported()
    assert invoice.id == invoice_id(ORG, 12345, 7)
    invoice.apply_upstream(normalize(document(7, day=date(2025, 3, 10))))
    assert names(invoice) == []
    invoice.apply_upstream(normalize(document(7, day=date(2025, 3, 10), paid=True)))
    (changed,) = invoice.collect_events()
    assert type(changed).__qualname__ == "Invoice.UpstreamChanged"
    assert set(changed.changes) == {"payments", "paid_cents", "status", "next_due_date"}
    invoice.mark_removed()
    invoice.mark_removed()
    invoice.apply_upstream(normalize(document(7, day=date(2025, 3, 10), paid=True)))
    assert names(invoice) == ["Invoice.RemovedUpstream", "Invoice.Restored"]


def test_allocations_never_exceed_the_invoice_and_say_what_remains():
    invoice = imported(net="1000")  # 1,220.00 gross
    deal, client = uuid4(), uuid4()
    first = invoice.allocate(deal_id=deal, client_id=client, amount_cents=100000, note=None, allocated_by=None)
    with pytest.raises(OverAllocated) as e:
        invoice.allocate(deal_id=deal, client_id=client, amount_cents=30000, note=None, allocated_by=None)
    assert "€220.00 of €1,220.00" in e.value.message and e.value.field == "amount"
    rest = invoice.allocate(deal_id=None, client_id=client, amount_cents=None, note="rest", allocated_by=None)
    assert invoice.remaining_cents == 0 and invoice.allocations[str(rest)]["amount_cents"] == 22000
    with pytest.raises(OverAllocated) as e:
        invoice.allocate(deal_id=deal, client_id=None, amount_cents=None, note=None, allocated_by=None)
    assert "fully allocated" in e.value.message
    invoice.unallocate(first)
    with pytest.raises(AllocationNotFound):
        invoice.unallocate(first)
    assert invoice.remaining_cents == 100000
    assert names(invoice) == ["Invoice.Allocated", "Invoice.Allocated", "Invoice.Unallocated"]
    with pytest.raises(DomainError) as e:
        invoice.allocate(deal_id=None, client_id=None, amount_cents=1, note=None, allocated_by=None)
    assert e.value.field == "deal_id"
    with pytest.raises(DomainError):
        invoice.allocate(deal_id=deal, client_id=None, amount_cents=0, note=None, allocated_by=None)


def test_a_removed_invoice_cannot_be_allocated():
    invoice = imported()
    invoice.mark_removed()
    with pytest.raises(DomainError) as e:
        invoice.allocate(deal_id=uuid4(), client_id=None, amount_cents=100, note=None, allocated_by=None)
    assert "removed from FattureInCloud" in e.value.message


def test_suggestions_score_vat_amount_and_dates_with_reasons():
    invoice = {"client_vat": "IT01234567890", "date": date(2025, 3, 10), "currency": "EUR"}
    best = {"client_vat": "01234567890", "open_cents": 122000, "close_date": date(2025, 3, 8), "status": "accepted"}
    score, reasons = score_deal(invoice, best, remaining_cents=122000)
    assert score == 100
    assert reasons == ["the deal's client has the invoice's VAT number (IT01234567890)",
                       "its open amount €1,220.00 equals the invoice's remaining amount",
                       "closed 2 day(s) before the invoice date", "the deal is won"]
    other = {"client_vat": "IT99999999999", "open_cents": 20000, "expected_close_date": date(2025, 12, 1),
             "status": "open"}
    score, reasons = score_deal(invoice, other, remaining_cents=122000)
    assert score == 0 and reasons[0].startswith("the deal's client has another VAT number")
    near = {"client_vat": None, "open_cents": 110000, "created_at": date(2025, 2, 20), "status": "open"}
    score, reasons = score_deal(invoice, near, remaining_cents=122000)
    assert score == 27 + 10 and "within 10%" in reasons[0]
