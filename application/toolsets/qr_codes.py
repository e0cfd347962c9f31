"""QR codes: the `crm_qr_codes_*` tools (tracked links `<public url>/q/<code>`, images, scan statistics).
The redirect and the image download are served by interfaces/tracking.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import time
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application import attachments
from application.links import check_links
from application.public import public_base
from application.organization import org_settings, org_today
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, sent
from application.toolset import Toolset
from domain.errors import DomainError, NotFound
from domain.qr_codes import CODE_ALPHABET, CODE_LENGTH, QR_FIELDS, QrCode
from projections import newsletter as newsletter_q
from projections import qr_codes as qr_q

QrCodeId = Annotated[UUID, Meta(description="The QR code id (from crm_qr_codes_list or crm_qr_codes_create).")]
TargetUrl = Annotated[str, Meta(min_length=8, max_length=2000, description=(
    "Where a scan leads: an absolute http:// or https:// URL (other schemes are refused)."))]
Label = Annotated[str, Meta(min_length=1, max_length=200, description="A name for people, e.g. 'Flyer March'.")]
Format = Literal["png", "svg"]
ErrorCorrection = Literal["L", "M", "Q", "H"]
IMAGE_LINK_TTL = 7 * 24 * 3600
MIME = {"png": "image/png", "svg": "image/svg+xml"}


def tracking_url(code: str) -> str:
    return f"{public_base()}/q/{code}"


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


# -- images ----------------------------------------------------------------------------------------------------
def render_image(url: str, fmt: str, size: int, margin: int, error: str) -> bytes:
    """The QR image of `url`: `size` pixels per module, `margin` modules of quiet zone."""
    import segno

    qr = segno.make(url, error=error.lower(), micro=False, boost_error=False)
    out = io.BytesIO()
    if fmt == "svg":
        qr.save(out, kind="svg", scale=size, border=margin, xmldecl=False)
    else:
        qr.save(out, kind="png", scale=size, border=margin)
    return out.getvalue()


def _image_sig(secret: bytes, qr_code_id: UUID, fmt: str, size: int, margin: int, error: str, expires: int) -> str:
    text = f"qr:{qr_code_id}:{fmt}:{size}:{margin}:{error}:{expires}"
    return base64.urlsafe_b64encode(hmac.new(secret, text.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def image_link(secret: bytes, qr_code_id: UUID, fmt: str, size: int, margin: int, error: str) -> tuple[str, int]:
    expires = int(time.time()) + IMAGE_LINK_TTL
    sig = _image_sig(secret, qr_code_id, fmt, size, margin, error, expires)
    return (f"{public_base()}/qr/{qr_code_id}.{fmt}?size={size}&margin={margin}&ecc={error}&expires={expires}"
            f"&sig={sig}", expires)


def check_image_link(secret: bytes, qr_code_id: UUID, fmt: str, size: str | None, margin: str | None,
                     error: str | None, expires: str | None, sig: str | None) -> tuple[int, int, str] | None:
    """(size, margin, error correction) when the download link is signed and not expired, else None."""
    try:
        size_i, margin_i, expires_i = int(size or ""), int(margin or ""), int(expires or "")
    except ValueError:
        return None
    if fmt not in MIME or error not in ("L", "M", "Q", "H") or not 1 <= size_i <= 50 or not 0 <= margin_i <= 20:
        return None
    good = _image_sig(secret, qr_code_id, fmt, size_i, margin_i, error, expires_i)
    if not sig or not hmac.compare_digest(good, sig) or expires_i < time.time():
        return None
    return size_i, margin_i, error


# -- outputs -----------------------------------------------------------------------------------------------------
class QrOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    code: str
    tracking_url: Annotated[str, Meta(description="The link the QR code encodes; it redirects to target_url.")]
    target_url: str
    label: str | None = None
    client_id: UUID | None = None
    deal_id: UUID | None = None
    campaign_id: UUID | None = None
    active: bool
    scans_count: int
    last_scan_at: datetime | None = None
    created_by: UUID | None = None
    created_by_name: str | None = None
    created_at: datetime
    updated_at: datetime


def _names(conn: Any, ids: list[Any]) -> dict[UUID, str]:
    wanted = [i for i in set(ids) if i is not None]
    if not wanted:
        return {}
    return {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM users WHERE id = ANY(%s)", (wanted,))}


def _out(row: dict[str, Any], names: dict[UUID, str]) -> QrOut:
    return msgspec.convert({**row, "tracking_url": tracking_url(row["code"]),
                            "created_by_name": names.get(row["created_by"])}, QrOut)


def present_qr(ctx: QueryContext, qr_code_id: UUID) -> QrOut:
    row = qr_q.get_code(ctx.conn, ctx.org_id, qr_code_id)
    return _out(row, _names(ctx.conn, [row["created_by"]]))


qr_codes = Toolset(
    "qr_codes", title="QR codes", description="Tracked QR codes: target URL, PNG/SVG image, scans per day and device",
    aggregate=QrCode, id_field="qr_code_id", id_type=QrCodeId, output=QrOut, present=present_qr,
    exists=qr_q.code_exists, subject="a QR code",
)
LINK_READS = ("clients", "deals", "newsletter")


# -- queries -------------------------------------------------------------------------------------------------------
class ListQrCodes(ListQuery, kw_only=True):
    """QR codes, newest first, with target, tracking link, active flag and scan counts. Filter by active or by
    the client, deal or campaign they are linked to. Pages with `cursor`/`next_cursor`."""

    active: bool | None = None
    client_id: Annotated[UUID | None, Meta(description="Only codes linked to this lead/client.")] = None
    deal_id: Annotated[UUID | None, Meta(description="Only codes linked to this deal.")] = None
    campaign_id: Annotated[UUID | None, Meta(description="Only codes linked to this newsletter campaign.")] = None


@qr_codes.query("list", output=Page[QrOut])
def list_codes(q: ListQrCodes, ctx: QueryContext) -> Page[QrOut]:
    rows, cursor = qr_q.list_codes(ctx.conn, ctx.org_id, active=q.active, client_id=q.client_id, deal_id=q.deal_id,
                                   campaign_id=q.campaign_id, limit=q.limit, cursor=q.cursor)
    names = _names(ctx.conn, [r["created_by"] for r in rows])
    return Page(items=[_out(r, names) for r in rows], next_cursor=cursor)


class GetQrCode(Query, kw_only=True):
    """One QR code: its target URL, the tracking link it encodes, links, active flag and scan count."""

    qr_code_id: QrCodeId


qr_codes.get(GetQrCode)


class ImageOut(Struct, kw_only=True):
    mime_type: str
    data_base64: str


class QrImage(Struct, kw_only=True):
    qr_code_id: UUID
    tracking_url: str
    format: Format
    size_px: Annotated[int, Meta(description="Width and height of the image in pixels.")]
    image: Annotated[ImageOut, Meta(description="The image itself (also sent as MCP image content).")]
    download_url: Annotated[str, Meta(description="A signed link to download the same image, valid 7 days.")]
    download_expires_at: datetime


class GetQrImage(Query, kw_only=True):
    """The QR image of a code's tracking link, as PNG or SVG (base64, also returned as an image the client can
    show) plus a signed download link. `size` is pixels per module, `margin` the quiet zone in modules,
    `error_correction` L (7%), M (15%), Q (25%) or H (30%, for printed codes with a logo over them)."""

    qr_code_id: QrCodeId
    format: Format = "png"
    size: Annotated[int, Meta(ge=1, le=50, description="Pixels per module, 1-50 (default 10).")] = 10
    margin: Annotated[int, Meta(ge=0, le=20, description="Quiet zone in modules, 0-20 (default 4).")] = 4
    error_correction: ErrorCorrection = "M"


@qr_codes.query("get_image", output=QrImage)
def get_image(q: GetQrImage, ctx: QueryContext) -> QrImage:
    import segno

    row = qr_q.get_code(ctx.conn, ctx.org_id, q.qr_code_id)
    url = tracking_url(row["code"])
    data = render_image(url, q.format, q.size, q.margin, q.error_correction)
    width = segno.make(url, error=q.error_correction.lower(), micro=False, boost_error=False).symbol_size(
        scale=q.size, border=q.margin)[0]
    link, expires = image_link(attachments.link_secret(ctx.conn), q.qr_code_id, q.format, q.size, q.margin,
                               q.error_correction)
    return QrImage(qr_code_id=q.qr_code_id, tracking_url=url, format=q.format, size_px=width,
                   image=ImageOut(mime_type=MIME[q.format], data_base64=base64.b64encode(data).decode()),
                   download_url=link, download_expires_at=datetime.fromtimestamp(expires, UTC))


class DayScans(Struct, kw_only=True):
    day: date
    scans: int
    unique_scanners: int


class Count(Struct, kw_only=True):
    name: str
    scans: int


class QrStats(Struct, kw_only=True):
    qr_code_id: UUID
    start_date: date
    end_date: date
    total_scans: Annotated[int, Meta(description="Every scan since the code was created.")]
    period_scans: int
    period_unique_scanners: Annotated[int, Meta(description="Sum of each day's unique scanners.")]
    days: list[DayScans]
    devices: list[Count]
    countries: list[Count]


class QrStatsQuery(Query, kw_only=True):
    """Scans of a QR code per day (in the organization's time zone) with unique scanners per day (a scanner is
    recognized within one day, never across days; no address is kept), totals, and scans by device class and
    country. Default period: the last 30 days."""

    qr_code_id: QrCodeId
    start_date: Annotated[date, Meta(description="First day, inclusive (YYYY-MM-DD).")] | None = None
    end_date: Annotated[date, Meta(description="Last day, inclusive (YYYY-MM-DD).")] | None = None


@qr_codes.query("stats", output=QrStats)
def stats(q: QrStatsQuery, ctx: QueryContext) -> QrStats:
    row = qr_q.get_code(ctx.conn, ctx.org_id, q.qr_code_id)
    end = q.end_date or org_today(ctx.conn, ctx.org_id)
    start = q.start_date or end - timedelta(days=29)
    if end < start:
        raise DomainError("end_date must not be before start_date", field="end_date")
    if (end - start).days > 3660:
        raise DomainError("the period can span at most 10 years", field="end_date")
    tz = org_settings(ctx.conn, ctx.org_id)["timezone"]
    found = qr_q.scan_stats(ctx.conn, ctx.org_id, q.qr_code_id, start, end, tz)
    days = [DayScans(**d) for d in found["days"]]
    return QrStats(qr_code_id=q.qr_code_id, start_date=start, end_date=end, total_scans=row["scans_count"],
                   period_scans=sum(d.scans for d in days), period_unique_scanners=sum(d.unique_scanners for d in days),
                   days=days, devices=[Count(name=d["device"], scans=d["scans"]) for d in found["devices"]],
                   countries=[Count(name=c["country"], scans=c["scans"]) for c in found["countries"]])


class ScanOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    scanned_at: datetime
    device: Literal["mobile", "tablet", "desktop", "bot", "other"]
    country: str | None = None


class ListScans(ListQuery, kw_only=True):
    """Individual scans of a QR code, newest first: time, coarse device class (mobile, tablet, desktop, bot, other)
    and country when known. Pages with `cursor`."""

    qr_code_id: QrCodeId
    since: Annotated[date, Meta(description="Only scans on or after this day (YYYY-MM-DD, UTC).")] | None = None
    until: Annotated[date, Meta(description="Only scans on or before this day (YYYY-MM-DD, UTC).")] | None = None


@qr_codes.query("list_scans", output=Page[ScanOut])
def list_scans(q: ListScans, ctx: QueryContext) -> Page[ScanOut]:
    qr_codes.require(ctx, q.qr_code_id)
    rows, cursor = qr_q.list_scans(ctx.conn, ctx.org_id, q.qr_code_id, since=q.since, until=q.until, limit=q.limit,
                                   cursor=q.cursor)
    return Page(items=[msgspec.convert(r, ScanOut) for r in rows], next_cursor=cursor)


# -- changes ------------------------------------------------------------------------------------------------------------
def _check_links(uow: UnitOfWork, links: dict[str, Any]) -> None:
    check_links(uow, {k: v for k, v in links.items() if k in ("client_id", "deal_id")})
    campaign_id = links.get("campaign_id")
    if campaign_id is not None and not newsletter_q.campaign_exists(uow.conn, uow.org_id, campaign_id):
        raise NotFound("campaign", campaign_id, field="campaign_id")


class CreateQrCode(Command, kw_only=True):
    """Generate a tracked QR code for a target URL: it encodes `<server>/q/<code>`, which redirects to the target
    and counts the scan. Optionally link it to a lead/client, a deal or a newsletter campaign. Get the image with
    crm_qr_codes_get_image."""

    target_url: TargetUrl
    label: Label | None = None
    client_id: Annotated[UUID | None, Meta(description="Lead/client the code is for.")] = None
    deal_id: Annotated[UUID | None, Meta(description="Deal the code is for.")] = None
    campaign_id: Annotated[UUID | None, Meta(description="Newsletter campaign the code belongs to.")] = None


@qr_codes.command("create", output=QrOut, returns=UUID, present=present_qr, reads=LINK_READS)
def create(cmd: CreateQrCode, uow: UnitOfWork) -> UUID:
    fields = {k: getattr(cmd, k) for k in QR_FIELDS}
    _check_links(uow, fields)
    code = QrCode.generate(uow.org_id, new_code(), fields, uow.principal.user_id)
    uow.add(code)
    return code.id


class UpdateQrCode(Command, kw_only=True):
    """Change a QR code's target URL (printed codes keep working and lead to the new target), label or links.
    Only the fields you send change; send null to clear an optional one."""

    qr_code_id: QrCodeId
    target_url: TargetUrl | UnsetType = UNSET
    label: Label | None | UnsetType = UNSET
    client_id: UUID | None | UnsetType = UNSET
    deal_id: UUID | None | UnsetType = UNSET
    campaign_id: UUID | None | UnsetType = UNSET


def _update(code: QrCode, cmd: UpdateQrCode, uow: UnitOfWork) -> None:
    changes = sent(cmd, QR_FIELDS)
    _check_links(uow, {k: v for k, v in changes.items() if v != getattr(code, k, None)})
    code.update(changes)


qr_codes.act("update", UpdateQrCode, _update, reads=LINK_READS)


class DeactivateQrCode(Command, kw_only=True):
    """Stop a QR code from redirecting: its link answers 410 Gone with a short page (crm_qr_codes_activate undoes it)."""

    qr_code_id: QrCodeId


qr_codes.act("deactivate", DeactivateQrCode, lambda c, cmd, uow: c.deactivate(), destructive=True)


class ActivateQrCode(Command, kw_only=True):
    """Let a deactivated QR code redirect to its target again."""

    qr_code_id: QrCodeId


qr_codes.act("activate", ActivateQrCode, lambda c, cmd, uow: c.activate())


class DeleteQrCode(Command, kw_only=True):
    """Delete a QR code and its scans; its link stops working (404). To pause it instead, deactivate it."""

    qr_code_id: QrCodeId


qr_codes.delete(DeleteQrCode)
