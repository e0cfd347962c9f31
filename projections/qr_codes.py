"""QR codes read model (codes with scan counters, individual scans) and its queries."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from domain.errors import NotFound
from domain.qr_codes import QrCode, Scan
from projections.base import Projection, exists, handles, set_columns, touch
from projections.pagination import BY_CREATION, Sort, paginate

QR_COLUMNS = ("id, code, target_url, label, client_id, deal_id, campaign_id, active, scans_count, last_scan_at,"
              " created_by, created_at, updated_at")
SCAN_COLUMNS = "id, qr_code_id, scanned_at, device, country"
BY_SCAN_TIME = Sort("scanned_at", "timestamptz", descending=True)


class QrCodesProjection(Projection):
    name = "qr_codes"
    tables = ("qr_codes", "qr_scans")
    resources = ("qr_codes",)

    @handles(QrCode.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = e.fields
        cur.execute(
            "INSERT INTO qr_codes (id, organization_id, code, target_url, label, client_id, deal_id, campaign_id,"
            " created_by, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.code, f.get("target_url"), f.get("label"), f.get("client_id"),
             f.get("deal_id"), f.get("campaign_id"), e.created_by, e.timestamp, e.timestamp))

    @handles(QrCode.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "qr_codes", e, dict(e.changes))

    @handles(QrCode.Deactivated)
    def deactivated(self, cur: Any, e: Any) -> None:
        touch(cur, "qr_codes", e, "active = false")

    @handles(QrCode.Activated)
    def activated(self, cur: Any, e: Any) -> None:
        touch(cur, "qr_codes", e, "active = true")

    @handles(QrCode.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM qr_scans WHERE qr_code_id = %s", (e.originator_id,))
        cur.execute("DELETE FROM qr_codes WHERE id = %s", (e.originator_id,))

    @handles(Scan.Recorded)
    def scanned(self, cur: Any, e: Any) -> None:
        cur.execute(
            "WITH code AS (UPDATE qr_codes SET scans_count = scans_count + 1,"
            " last_scan_at = greatest(last_scan_at, %s) WHERE id = %s RETURNING id)"
            " INSERT INTO qr_scans (id, organization_id, qr_code_id, scanned_at, device, country, visitor)"
            " SELECT %s, %s, id, %s, %s, %s, %s FROM code",
            (e.timestamp, e.qr_code_id, e.originator_id, e.org_id, e.timestamp, e.device, e.country, e.visitor))


def list_codes(conn: Any, org_id: UUID, *, active: bool | None, client_id: UUID | None, deal_id: UUID | None,
               campaign_id: UUID | None, limit: int, cursor: str | None, sort: str = "created_desc"):
    where, params = ["organization_id = %s"], [org_id]
    for column, value in (("active", active), ("client_id", client_id), ("deal_id", deal_id),
                          ("campaign_id", campaign_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    return paginate(conn, QR_COLUMNS, "FROM qr_codes WHERE " + " AND ".join(where), params, BY_CREATION[sort], limit,
                    cursor)


def get_code(conn: Any, org_id: UUID, qr_code_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {QR_COLUMNS} FROM qr_codes WHERE organization_id = %s AND id = %s",
                       (org_id, qr_code_id)).fetchone()
    if row is None:
        raise NotFound("QR code", qr_code_id, field="qr_code_id")
    return row


def code_exists(conn: Any, org_id: UUID, qr_code_id: UUID) -> bool:
    return exists(conn, "qr_codes", org_id, qr_code_id)


def by_code(conn: Any, code: str) -> dict[str, Any] | None:
    """The code behind a tracking link, any organization (the link is public by design)."""
    return conn.execute("SELECT id, organization_id, target_url, active FROM qr_codes WHERE code = %s",
                        (code,)).fetchone()


def list_scans(conn: Any, org_id: UUID, qr_code_id: UUID, *, since: date | None, until: date | None, limit: int,
               cursor: str | None):
    where, params = "FROM qr_scans WHERE organization_id = %s AND qr_code_id = %s", [org_id, qr_code_id]
    if since is not None:
        where += " AND scanned_at >= %s::date"
        params.append(since)
    if until is not None:
        where += " AND scanned_at < %s::date + 1"
        params.append(until)
    return paginate(conn, SCAN_COLUMNS, where, params, BY_SCAN_TIME,
                    limit, cursor)


def scan_stats(conn: Any, org_id: UUID, qr_code_id: UUID, start: date, end: date, tz: str) -> dict[str, Any]:
    """Scans per day (in the organization's time zone), unique visitors per day, and by device, in start..end."""
    days = conn.execute(
        "SELECT (scanned_at AT TIME ZONE %s)::date AS day, count(*)::int AS scans,"
        " count(DISTINCT visitor)::int AS unique_scanners FROM qr_scans"
        " WHERE organization_id = %s AND qr_code_id = %s AND (scanned_at AT TIME ZONE %s)::date BETWEEN %s AND %s"
        " GROUP BY 1 ORDER BY 1", (tz, org_id, qr_code_id, tz, start, end)).fetchall()
    devices = conn.execute(
        "SELECT device, count(*)::int AS scans FROM qr_scans WHERE organization_id = %s AND qr_code_id = %s"
        " AND (scanned_at AT TIME ZONE %s)::date BETWEEN %s AND %s GROUP BY device ORDER BY 2 DESC, 1",
        (org_id, qr_code_id, tz, start, end)).fetchall()
    countries = conn.execute(
        "SELECT country, count(*)::int AS scans FROM qr_scans WHERE organization_id = %s AND qr_code_id = %s"
        " AND country IS NOT NULL AND (scanned_at AT TIME ZONE %s)::date BETWEEN %s AND %s"
        " GROUP BY country ORDER BY 2 DESC, 1 LIMIT 50", (org_id, qr_code_id, tz, start, end)).fetchall()
    return {"days": days, "devices": devices, "countries": countries}
