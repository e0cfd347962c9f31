"""Invoices read model (invoices, invoice_payments, invoice_allocations) and the queries the invoice tools answer.

Amounts are integer cents of the invoice's own currency; sums are per currency (an organization may invoice in
several). A deal's invoiced and paid amounts (`deal_totals`) come from its allocations: paid is each allocation's
share of its invoice's paid amount.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from domain.clients import vat_key
from domain.errors import NotFound
from domain.invoices import Invoice
from projections.base import Projection, exists, handles, set_columns, touch
from projections.pagination import Sort, paginate

INVOICE_COLUMNS = (
    "id, source, company_id, external_id, number, numeration, full_number, date, currency, client_external_id,"
    " client_name, client_vat, client_tax_code, subject, net_cents, vat_cents, gross_cents, due_cents, paid_cents,"
    " allocated_cents, status, next_due_date, pdf_url, e_invoice_status, cancelled_at, imported_at, updated_at"
)
SORTS = {
    "date_desc": Sort("coalesce(date, '0001-01-01'::date)", "date", descending=True),
    "date_asc": Sort("coalesce(date, '9999-12-31'::date)", "date"),
    "due_asc": Sort("coalesce(next_due_date, '9999-12-31'::date)", "date"),
    "amount_desc": Sort("gross_cents", "bigint", descending=True),
}
SEARCH_REFRESH = (
    "UPDATE invoices SET search_tsv = to_tsvector('simple', lower(f_unaccent(concat_ws(' ', full_number, numeration,"
    " client_name, client_vat, client_tax_code, subject)))) WHERE id = %s"
)
STATUS_FROM_AMOUNTS = (
    "CASE WHEN due_cents > 0 AND paid_cents >= due_cents THEN 'paid' WHEN paid_cents > 0 THEN 'partially_paid'"
    " ELSE 'unpaid' END"
)
SNAPSHOT_COLUMNS = ("number", "numeration", "full_number", "date", "currency", "subject", "net_cents", "vat_cents",
                    "gross_cents", "due_cents", "paid_cents", "status", "next_due_date", "pdf_url", "e_invoice_status")


def _columns(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Read-model columns of (part of) a snapshot; payments go to their own table."""
    out = {k: snapshot[k] for k in SNAPSHOT_COLUMNS if k in snapshot}
    if "lines" in snapshot:
        out["lines"] = Jsonb(snapshot["lines"])
    if "vat_breakdown" in snapshot:
        out["vat_breakdown"] = Jsonb(snapshot["vat_breakdown"])
    if "client" in snapshot:
        client = snapshot["client"] or {}
        out.update(client_external_id=client.get("external_id"), client_name=client.get("name"),
                   client_vat=client.get("vat_number"), client_vat_key=vat_key(client.get("vat_number")),
                   client_tax_code=client.get("tax_code"))
    return out


class InvoicesProjection(Projection):
    name = "invoices"
    tables = ("invoices", "invoice_payments", "invoice_allocations")
    resources = ("invoices",)

    def _payments(self, cur: Any, e: Any, org_id: Any, payments: list[dict[str, Any]]) -> None:
        unpaid = [p for p in payments if p.get("status") == "not_paid" and p.get("due_date")]
        cur.execute("UPDATE invoices SET unpaid_due_dates = %s::date[], unpaid_amounts = %s::bigint[], unpaid_cents = %s,"
                    " last_due_date = %s WHERE id = %s",
                    ([p["due_date"] for p in unpaid], [p.get("amount_cents") or 0 for p in unpaid],
                     sum(p.get("amount_cents") or 0 for p in unpaid), max((p["due_date"] for p in unpaid), default=None),
                     e.originator_id))
        cur.execute("DELETE FROM invoice_payments WHERE invoice_id = %s", (e.originator_id,))
        for i, p in enumerate(payments):
            cur.execute(
                "INSERT INTO invoice_payments (invoice_id, organization_id, position, due_date, amount_cents, status,"
                " paid_date) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (e.originator_id, org_id, i, p.get("due_date"), p.get("amount_cents") or 0, p.get("status"),
                 p.get("paid_date")))

    @handles(Invoice.Imported)
    def imported(self, cur: Any, e: Any) -> None:
        values = {**_columns(e.snapshot), "id": e.originator_id, "organization_id": e.org_id, "source": e.source,
                  "company_id": e.company_id, "external_id": e.external_id, "imported_at": e.timestamp,
                  "updated_at": e.timestamp}
        cur.execute(f"INSERT INTO invoices ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})",  # noqa: S608
                    tuple(values.values()))
        self._payments(cur, e, e.org_id, e.snapshot.get("payments") or [])
        cur.execute(SEARCH_REFRESH, (e.originator_id,))

    @handles(Invoice.UpstreamChanged)
    def upstream_changed(self, cur: Any, e: Any) -> None:
        set_columns(cur, "invoices", e, _columns(e.changes))
        if "payments" in e.changes:
            org = cur.execute("SELECT organization_id FROM invoices WHERE id = %s", (e.originator_id,)).fetchone()
            if org is not None:
                self._payments(cur, e, org["organization_id"] if isinstance(org, dict) else org[0],
                               e.changes["payments"] or [])
        cur.execute(SEARCH_REFRESH, (e.originator_id,))

    @handles(Invoice.RemovedUpstream)
    def removed(self, cur: Any, e: Any) -> None:
        touch(cur, "invoices", e, "status = 'cancelled', cancelled_at = %s", (e.timestamp,))

    @handles(Invoice.Restored)
    def restored(self, cur: Any, e: Any) -> None:
        touch(cur, "invoices", e, f"status = {STATUS_FROM_AMOUNTS}, cancelled_at = NULL")

    @handles(Invoice.Allocated)
    def allocated(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO invoice_allocations (id, organization_id, invoice_id, deal_id, client_id, amount_cents, note,"
            " created_by, created_at) SELECT %s, organization_id, id, %s, %s, %s, %s, %s, %s FROM invoices WHERE id = %s",
            (e.allocation_id, e.deal_id, e.client_id, e.amount_cents, e.note, e.allocated_by, e.timestamp,
             e.originator_id))
        touch(cur, "invoices", e, "allocated_cents = allocated_cents + %s", (e.amount_cents,))

    @handles(Invoice.Unallocated)
    def unallocated(self, cur: Any, e: Any) -> None:
        touch(cur, "invoices", e,
              "allocated_cents = allocated_cents - coalesce((SELECT amount_cents FROM invoice_allocations WHERE id = %s), 0)",
              (e.allocation_id,))
        cur.execute("DELETE FROM invoice_allocations WHERE id = %s", (e.allocation_id,))


# -- queries ---------------------------------------------------------------------------------------------------
def _filters(org_id: UUID, f: dict[str, Any]) -> tuple[list[str], list[Any]]:
    where = ["organization_id = %s"]
    params: list[Any] = [org_id]
    status = f.get("status")
    if status == "open":
        where.append("status IN ('unpaid', 'partially_paid')")
    elif status is not None:
        where.append("status = %s")
        params.append(status)
    if f.get("date_from") is not None:
        where.append("date >= %s")
        params.append(f["date_from"])
    if f.get("date_to") is not None:
        where.append("date <= %s")
        params.append(f["date_to"])
    if f.get("client_vat"):
        where.append("client_vat_key = %s")
        params.append(vat_key(f["client_vat"]))
    if f.get("client_name"):
        where.append("lower(f_unaccent(client_name)) LIKE '%%' || lower(f_unaccent(%s)) || '%%'")
        params.append(f["client_name"])
    if f.get("allocated") is True:
        where.append("allocated_cents > 0")
    elif f.get("allocated") is False:
        where.append("allocated_cents = 0")
    if f.get("unallocated"):
        where.append("allocated_cents < gross_cents AND status <> 'cancelled'")
    for column in ("deal_id", "client_id"):
        if f.get(column) is not None:
            where.append(f"EXISTS (SELECT 1 FROM invoice_allocations a WHERE a.invoice_id = invoices.id"
                         f" AND a.{column} = %s)")
            params.append(f[column])
    if f.get("overdue_on") is not None:
        where.append("status IN ('unpaid', 'partially_paid') AND next_due_date < %s")
        params.append(f["overdue_on"])
    return where, params


def list_invoices(conn: Any, org_id: UUID, *, filters: dict[str, Any], sort: str = "date_desc", limit: int = 25,
                  cursor: str | None = None):
    where, params = _filters(org_id, filters)
    return paginate(conn, INVOICE_COLUMNS, "FROM invoices WHERE " + " AND ".join(where), params, SORTS[sort], limit,
                    cursor)


def search_invoices(conn: Any, org_id: UUID, text: str, *, limit: int = 25) -> list[dict[str, Any]]:
    """By number (exact, e.g. '12' or '12/A'), VAT number (normalised), or words of the client and subject
    (prefixes, accents and case ignored). Exact number and VAT matches first."""
    words = [w for w in "".join(ch if ch.isalnum() else " " for ch in text).split() if w]
    tsq = " & ".join(f"{w}:*" for w in words) if words else None
    compact = text.strip().replace(" ", "")
    number = int(compact) if compact.isdigit() and len(compact) < 10 else None
    return conn.execute(
        f"SELECT {INVOICE_COLUMNS},"
        " (CASE WHEN number = %(number)s OR lower(full_number) = lower(%(compact)s) THEN 3 ELSE 0 END"
        "  + CASE WHEN client_vat_key = %(vat)s THEN 2 ELSE 0 END"
        "  + CASE WHEN %(tsq)s::text IS NOT NULL THEN ts_rank(search_tsv, to_tsquery('simple', lower(f_unaccent(%(tsq)s))))"
        "    ELSE 0 END)::float AS score"
        " FROM invoices WHERE organization_id = %(org)s AND (number = %(number)s OR lower(full_number) = lower(%(compact)s)"
        "  OR client_vat_key = %(vat)s"
        "  OR (%(tsq)s::text IS NOT NULL AND search_tsv @@ to_tsquery('simple', lower(f_unaccent(%(tsq)s)))))"
        " ORDER BY score DESC, date DESC NULLS LAST, id LIMIT %(limit)s",
        {"org": org_id, "number": number, "compact": compact, "vat": vat_key(text), "tsq": tsq, "limit": limit},
    ).fetchall()


def get_invoice(conn: Any, org_id: UUID, invoice_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {INVOICE_COLUMNS}, lines, vat_breakdown FROM invoices WHERE organization_id = %s"
                       " AND id = %s", (org_id, invoice_id)).fetchone()
    if row is None:
        raise NotFound("invoice", invoice_id, field="invoice_id")
    row["payments"] = conn.execute(
        "SELECT position, due_date, amount_cents, status, paid_date FROM invoice_payments WHERE invoice_id = %s"
        " ORDER BY position", (invoice_id,)).fetchall()
    row["allocations"] = list_allocations(conn, org_id, invoice_id)
    return row


def list_allocations(conn: Any, org_id: UUID, invoice_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT a.id, a.invoice_id, a.deal_id, d.title AS deal_title, coalesce(a.client_id, d.client_id) AS client_id,"
        " c.business_name AS client_name, a.amount_cents, a.note, a.created_by, u.name AS created_by_name, a.created_at"
        " FROM invoice_allocations a LEFT JOIN deals d ON d.id = a.deal_id"
        " LEFT JOIN clients c ON c.id = coalesce(a.client_id, d.client_id)"
        " LEFT JOIN users u ON u.id = a.created_by"
        " WHERE a.organization_id = %s AND a.invoice_id = %s ORDER BY a.created_at, a.id", (org_id, invoice_id)).fetchall()


def get_allocation(conn: Any, org_id: UUID, allocation_id: UUID) -> dict[str, Any] | None:
    return conn.execute("SELECT id, invoice_id FROM invoice_allocations WHERE organization_id = %s AND id = %s",
                        (org_id, allocation_id)).fetchone()


def invoice_exists(conn: Any, org_id: UUID, invoice_id: UUID) -> bool:
    return exists(conn, "invoices", org_id, invoice_id)


def totals(conn: Any, org_id: UUID, *, date_from: date, date_to: date, today: date, by_client: bool = False,
           client_vat: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Invoiced (gross), paid, outstanding (due less paid) and overdue (unpaid instalments past their due date) of
    the invoices dated in the period, cancelled ones left out; per currency, and per client when asked."""
    client_cols = "client_vat_key, max(client_vat) AS client_vat, max(client_name) AS client_name," if by_client else ""
    group = "currency, client_vat_key, CASE WHEN client_vat_key IS NULL THEN client_name END" if by_client else "currency"
    # What is overdue comes from each invoice's own row, no join: nothing when its first unpaid instalment is not due
    # yet, all it still owes when its last one is past, and only in between its instalments one by one.
    return conn.execute(
        f"""
        SELECT {client_cols} currency, count(*)::int AS invoices, sum(gross_cents)::bigint AS invoiced_cents,
               sum(paid_cents)::bigint AS paid_cents, sum(greatest(due_cents - paid_cents, 0))::bigint AS outstanding_cents,
               coalesce(sum(CASE WHEN next_due_date IS NULL OR next_due_date >= %(today)s THEN 0
                                 WHEN last_due_date < %(today)s THEN unpaid_cents
                                 ELSE (SELECT sum(a) FROM unnest(unpaid_due_dates, unpaid_amounts) AS u(d, a)
                                       WHERE d < %(today)s) END), 0)::bigint AS overdue_cents
        FROM invoices i
        WHERE organization_id = %(org)s AND date BETWEEN %(from)s AND %(to)s AND status <> 'cancelled'
          AND (%(vat)s::text IS NULL OR client_vat_key = %(vat)s)
        GROUP BY {group}
        ORDER BY sum(gross_cents) DESC, currency
        LIMIT %(limit)s
        """,
        {"org": org_id, "from": date_from, "to": date_to, "today": today, "vat": vat_key(client_vat), "limit": limit},
    ).fetchall()


def deal_totals(conn: Any, org_id: UUID, deal_id: UUID) -> dict[str, Any]:
    """What a deal was invoiced (the sum of its allocations) and how much of that is paid (each allocation's share
    of its invoice's paid amount, in cents rounded down), over non-cancelled invoices."""
    return conn.execute(
        "SELECT count(DISTINCT i.id)::int AS invoices, coalesce(sum(a.amount_cents), 0)::bigint AS invoiced_cents,"
        " coalesce(sum(CASE WHEN i.due_cents > 0 THEN least(a.amount_cents, a.amount_cents * i.paid_cents / i.due_cents)"
        "   ELSE 0 END), 0)::bigint AS paid_cents"
        " FROM invoice_allocations a JOIN invoices i ON i.id = a.invoice_id"
        " WHERE a.organization_id = %s AND a.deal_id = %s AND i.status <> 'cancelled'", (org_id, deal_id)).fetchone()


def candidate_deals(conn: Any, org_id: UUID, *, client_vat: str | None, currency: str, remaining_cents: int,
                    limit: int = 200) -> list[dict[str, Any]]:
    """Deals worth scoring for an invoice: its client's (same VAT number) and those whose open amount (value less
    what is already allocated to them) is within half of the invoice's remaining amount; same currency."""
    return conn.execute(
        """
        WITH allocated AS (
            SELECT deal_id, sum(amount_cents) AS cents FROM invoice_allocations
            WHERE organization_id = %(org)s AND deal_id IS NOT NULL GROUP BY deal_id
        )
        SELECT d.id, d.title, d.status, d.client_id, c.business_name AS client_name, c.vat_number AS client_vat,
               d.value_cents, d.value_cents - coalesce(a.cents, 0) AS open_cents, d.currency, d.close_date,
               d.expected_close_date, d.created_at
        FROM deals d LEFT JOIN clients c ON c.id = d.client_id LEFT JOIN allocated a ON a.deal_id = d.id
        WHERE d.organization_id = %(org)s AND d.currency = %(currency)s AND d.status <> 'rejected'
          AND ((%(vat)s::text IS NOT NULL AND c.vat_key = %(vat)s)
               OR d.value_cents - coalesce(a.cents, 0) BETWEEN %(low)s AND %(high)s)
        ORDER BY (c.vat_key IS NOT DISTINCT FROM %(vat)s) DESC, abs(d.value_cents - coalesce(a.cents, 0) - %(rem)s), d.id
        LIMIT %(limit)s
        """,
        {"org": org_id, "currency": currency, "vat": vat_key(client_vat), "low": remaining_cents // 2,
         "high": remaining_cents * 3 // 2, "rem": remaining_cents, "limit": limit},
    ).fetchall()


def candidate_clients(conn: Any, org_id: UUID, client_vat: str | None, limit: int = 10) -> list[dict[str, Any]]:
    if not vat_key(client_vat):
        return []
    return conn.execute("SELECT id, business_name, vat_number FROM clients WHERE organization_id = %s AND vat_key = %s"
                        " ORDER BY created_at, id LIMIT %s", (org_id, vat_key(client_vat), limit)).fetchall()
