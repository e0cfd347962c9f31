"""Public endpoints without a token: newsletter tracking and unsubscribe links, QR redirects and QR image downloads.

- `GET /t/o/<token>.gif`: open pixel (records an open, answers a 1x1 GIF whatever happens);
- `GET /t/c/<delivery>/<index>/<sig>`: click redirect, only to the campaign's own link number `index`
  (no open redirect: the target is never read from the request);
- `GET /t/u/<token>`: unsubscribe page with a button; `POST /t/u/<token>`: unsubscribe (RFC 8058 one-click:
  `List-Unsubscribe=One-Click`, or the page's button). A GET never unsubscribes (link scanners fetch links);
- `GET /q/<code>`: 302 to the code's target and a scan event; 410 page when deactivated, 404 when unknown;
- `GET /qr/<id>.<png|svg>?size&margin&ecc&expires&sig`: a QR image behind a signed link (crm_qr_codes_get_image).

Tracking ids are HMAC-signed (application/newsletter_sending.py): a forged or altered link does nothing.
Nothing here logs a path, an address or a header value.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from html import escape
from typing import Any
from uuid import UUID

import logging

import anyio
from litestar import Request, get, post
from litestar.response import Redirect, Response

from application import attachments
from application import newsletter_sending as sending
from application.logsafe import describe
from application.toolsets.qr_codes import MIME, check_image_link, render_image, tracking_url
from domain.qr_codes import Scan, country_code, device_class, valid_code
from projections import newsletter as newsletter_q
from projections import qr_codes as qr_q
from interfaces.public_url import PublicUrls

log = logging.getLogger("flusia.tracking")
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
NO_STORE = {"Cache-Control": "no-store, private", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _page(status: int, title: str, body: str) -> Response[str]:
    html = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            "content=\"width=device-width,initial-scale=1\"><meta name=\"robots\" content=\"noindex\">"
            f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;"
            "margin:4rem auto;padding:0 1rem;color:#222}button{font-size:1rem;padding:.6rem 1.2rem}</style></head>"
            f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>")
    return Response(html, status_code=status, media_type="text/html; charset=utf-8",
                    headers={**NO_STORE, "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
                             " form-action 'self'"})


async def _thread(request: Request[Any, Any, Any], fn: Any, *args: Any) -> Any:
    runtime = request.app.state.runtime
    return await anyio.to_thread.run_sync(fn, runtime, *args, limiter=runtime.runner.limiter)


# -- newsletter -----------------------------------------------------------------------------------------------------
def _open(runtime: Any, value: str) -> None:
    with runtime.pool.connection() as conn:
        delivery_id = sending.check_token(attachments.link_secret(conn), "o", value)
        row = sending.delivery(conn, delivery_id) if delivery_id else None
    if row is not None and row["kind"] == "campaign":
        sending.record_engagement(runtime.store, row["organization_id"], row["campaign_id"], row["id"], "open", None)


@get("/t/o/{name:str}", include_in_schema=False)
async def open_pixel(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    try:
        await _thread(request, _open, name.removesuffix(".gif"))
    except Exception as e:  # the pixel never fails the mail client
        log.error("open pixel failed error=%s", describe(e))
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


def _click(runtime: Any, delivery: str, index: int, sig: str) -> str | None:
    with runtime.pool.connection() as conn:
        delivery_id = sending.check_token(attachments.link_secret(conn), "c", f"{delivery}.{sig}", index)
        row = sending.delivery(conn, delivery_id) if delivery_id else None
        found = newsletter_q.campaign_links_of(conn, row["campaign_id"]) if row else None
    if row is None or found is None or found[0] != row["organization_id"] or not 0 <= index < len(found[1]):
        return None
    if row["kind"] == "campaign":
        sending.record_engagement(runtime.store, row["organization_id"], row["campaign_id"], row["id"], "click",
                                  found[1][index])
    return found[1][index]


@get("/t/c/{delivery:str}/{index:int}/{sig:str}", include_in_schema=False)
async def click(request: Request[Any, Any, Any], delivery: str, index: int, sig: str) -> Response[Any]:
    target = await _thread(request, _click, delivery, index, sig)
    if target is None:
        return _page(404, "Link not found", "<p>This link is not valid.</p>")
    return Redirect(target, status_code=302, headers=NO_STORE)


def _recipient(runtime: Any, value: str) -> dict[str, Any] | None:
    with runtime.pool.connection() as conn:
        delivery_id = sending.check_token(attachments.link_secret(conn), "u", value)
        return sending.delivery(conn, delivery_id) if delivery_id else None


def _unsubscribe(runtime: Any, value: str) -> dict[str, Any] | None:
    row = _recipient(runtime, value)
    if row is not None and row["kind"] == "campaign":
        with runtime.pool.connection() as conn:
            sending.unsubscribe(runtime.store, conn, row)
    return row


@get("/t/u/{value:str}", include_in_schema=False)
async def unsubscribe_page(request: Request[Any, Any, Any], value: str) -> Response[str]:
    row = await _thread(request, _recipient, value)
    if row is None:
        return _page(404, "Link not found", "<p>This unsubscribe link is not valid.</p>")
    return _page(200, "Unsubscribe", f"<p>Stop sending newsletters to <strong>{escape(row['email'])}</strong>?</p>"
                 f"<form method=\"post\" action=\"/t/u/{escape(value)}\"><button type=\"submit\" name=\"confirm\""
                 " value=\"1\">Unsubscribe</button></form>")


@post("/t/u/{value:str}", include_in_schema=False, status_code=200)
async def unsubscribe_post(request: Request[Any, Any, Any], value: str) -> Response[str]:
    row = await _thread(request, _unsubscribe, value)
    if row is None:
        return _page(404, "Link not found", "<p>This unsubscribe link is not valid.</p>")
    return _page(200, "Unsubscribed", f"<p>{escape(row['email'])} will receive no more newsletters from this list.</p>")


# -- QR codes -------------------------------------------------------------------------------------------------------
def _client(request: Request[Any, Any, Any]) -> str:
    return PublicUrls.from_env().client_address(request.scope)


def _scan(runtime: Any, code: str, user_agent: str | None, country: str | None, client: str) -> tuple[int, str | None]:
    with runtime.pool.connection() as conn:
        row = qr_q.by_code(conn, code)
        secret = attachments.link_secret(conn) if row else b""
    if row is None:
        return 404, None
    if not row["active"]:
        return 410, None
    day = datetime.now(UTC).date().isoformat()
    visitor = hmac.new(secret, f"scan:{row['id']}:{day}:{client}:{user_agent or ''}".encode(),
                       hashlib.sha256).hexdigest()[:16]
    scan = Scan(org_id=row["organization_id"], qr_code_id=row["id"], device=device_class(user_agent),
                country=country_code(country), visitor=visitor)
    runtime.store.save(scan, cause={"organization_id": row["organization_id"], "user_id": None, "token_id": None,
                                    "oauth_client_id": None, "correlation_id": scan.id, "tool": "qr_scan"})
    return 302, row["target_url"]


@get("/q/{code:str}", include_in_schema=False)
async def qr_redirect(request: Request[Any, Any, Any], code: str) -> Response[Any]:
    if not valid_code(code):
        return _page(404, "QR code not found", "<p>This code does not exist.</p>")
    status, target = await _thread(request, _scan, code, request.headers.get("user-agent"),
                                   request.headers.get("cf-ipcountry"), _client(request))
    if status == 404:
        return _page(404, "QR code not found", "<p>This code does not exist.</p>")
    if status == 410:
        return _page(410, "QR code no longer active", "<p>This QR code has been deactivated by its owner.</p>")
    return Redirect(target, status_code=302, headers=NO_STORE)


def _image(runtime: Any, qr_code_id: UUID, fmt: str, params: dict[str, str | None]) -> bytes | None:
    with runtime.pool.connection() as conn:
        checked = check_image_link(attachments.link_secret(conn), qr_code_id, fmt, params["size"], params["margin"],
                                   params["ecc"], params["expires"], params["sig"])
        row = conn.execute("SELECT code FROM qr_codes WHERE id = %s", (qr_code_id,)).fetchone() if checked else None
    if row is None or checked is None:
        return None
    size, margin, error = checked
    return render_image(tracking_url(row["code"]), fmt, size, margin, error)


@get("/qr/{name:str}", include_in_schema=False)
async def qr_image(request: Request[Any, Any, Any], name: str) -> Response[Any]:
    stem, _, fmt = name.rpartition(".")
    try:
        qr_code_id = UUID(stem)
    except ValueError:
        return _page(404, "Not found", "<p>No such image.</p>")
    params = {k: request.query_params.get(k) for k in ("size", "margin", "ecc", "expires", "sig")}
    data = await _thread(request, _image, qr_code_id, fmt, params)
    if data is None:
        return _page(403, "Link not valid", "<p>This download link is not valid or has expired.</p>")
    return Response(data, media_type=MIME[fmt], headers={
        **NO_STORE, "Content-Disposition": f"attachment; filename=\"qr-{qr_code_id}.{fmt}\""})


tracking_routes = [open_pixel, click, unsubscribe_page, unsubscribe_post, qr_redirect, qr_image]
