"""WhatsApp's webhook and media downloads: public endpoints without a token.

- `GET /webhooks/whatsapp/<organization_id>?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`: Meta's
  verification handshake; answers the challenge when the verify token is the organization's (constant-time
  comparison), else 403.
- `POST /webhooks/whatsapp/<organization_id>`: a delivery, accepted only with a valid `X-Hub-Signature-256`
  (HMAC-SHA256 of the raw body with the organization's app secret): otherwise 401 and nothing is stored. Its
  messages and statuses for the organization's own business number are stored in `whatsapp_inbox` in the request
  and applied by the worker (application/whatsapp_inbox.py); the answer (200) does not wait for them.
- `GET /whatsapp/media/<message_id>?expires&sig`: a received photo, voice note or document, behind the signed,
  expiring link crm_whatsapp_list_messages hands out; fetched from the Cloud API with the organization's token.

Nothing here logs a body, a header value or an address: one line per delivery with counts.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from uuid import UUID

import anyio
from litestar import Request, get, post
from litestar.response import Response

from application import attachments
from application import whatsapp_cloud as cloud
from application import whatsapp_inbox as inbox
from application.logsafe import describe
from domain.errors import DomainError

log = logging.getLogger("flusia.whatsapp")
NO_STORE = {"Cache-Control": "no-store, private", "X-Content-Type-Options": "nosniff"}
CHALLENGE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def _org(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


async def _thread(request: Request[Any, Any, Any], fn: Any, *args: Any) -> Any:
    runtime = request.app.state.runtime
    return await anyio.to_thread.run_sync(fn, runtime, *args, limiter=runtime.runner.limiter)


def verify(runtime: Any, org: UUID | None, mode: str | None, token: str | None) -> bool:
    if org is None:
        return False
    with runtime.pool.connection() as conn:
        try:
            connection = cloud.load(conn, org)
        except DomainError:
            return False
    return connection is not None and inbox.handshake_ok(connection.verify_token, mode, token)


@get("/webhooks/whatsapp/{organization_id:str}", include_in_schema=False)
async def handshake(request: Request[Any, Any, Any], organization_id: str) -> Response[str]:
    params = request.query_params
    challenge = params.get("hub.challenge")
    ok = await _thread(request, verify, _org(organization_id), params.get("hub.mode"), params.get("hub.verify_token"))
    if not ok or not challenge or not CHALLENGE.match(challenge):
        return Response("forbidden", status_code=403, media_type="text/plain", headers=NO_STORE)
    return Response(challenge, status_code=200, media_type="text/plain", headers=NO_STORE)


def receive(runtime: Any, org: UUID | None, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer) for one delivery; stores its items only when the signature is the organization's."""
    if org is None:
        return 404, {"error": "not_found"}
    with runtime.pool.connection() as conn:
        try:
            connection = cloud.load(conn, org)
        except DomainError:
            connection = None
        if connection is None or not inbox.signature_ok(connection.app_secret, body, signature):
            return 401, {"error": "invalid_signature"}
        try:
            counts = inbox.store_delivery(conn, org, connection.phone_number_id, body)
        except inbox.BadDelivery:
            return 400, {"error": "not_a_whatsapp_delivery"}
    return 200, {"ok": True, **counts}


@post("/webhooks/whatsapp/{organization_id:str}", include_in_schema=False, status_code=200)
async def deliver(request: Request[Any, Any, Any], organization_id: str) -> Response[dict[str, Any]]:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > inbox.MAX_BODY):
        return Response({"error": "too_large"}, status_code=413)
    body = await request.body()
    if len(body) > inbox.MAX_BODY:
        return Response({"error": "too_large"}, status_code=413)
    org = _org(organization_id)
    try:
        status, answer = await _thread(request, receive, org, body, request.headers.get("x-hub-signature-256"))
    except Exception as e:  # Meta retries a non-2xx answer: nothing is lost
        log.error("whatsapp webhook failed error=%s", describe(e))
        return Response({"error": "unavailable"}, status_code=503, headers={"Retry-After": "5"})
    log.info("whatsapp_webhook org=%s status=%s stored=%s duplicates=%s ignored=%s", org if status != 404 else "-",
             status, answer.get("stored", 0), answer.get("duplicates", 0), answer.get("ignored", 0))
    return Response(answer, status_code=status)


def media(runtime: Any, message: UUID, expires: str | None, sig: str | None) -> tuple[int, Any, str]:
    with runtime.pool.connection() as conn:
        problem = attachments.check_link(attachments.link_secret(conn), f"whatsapp-media:{message}", expires, sig)
        if problem is not None:
            return (410, b"the link has expired; list the messages again for a fresh one", "text/plain") \
                if problem == "expired" else (403, b"the link is not valid", "text/plain")
        row = conn.execute("SELECT organization_id, details FROM whatsapp_messages WHERE id = %s", (message,)).fetchone()
        media_part = ((row or {}).get("details") or {}).get("media") or {}
        if row is None or not media_part.get("media_id"):
            return 404, b"no such media", "text/plain"
        try:
            connection = cloud.load(conn, row["organization_id"])
        except DomainError:
            connection = None
    if connection is None:
        return 503, b"WhatsApp is not connected", "text/plain"
    try:
        api = cloud.CloudApi(connection)
        info = api.media(media_part["media_id"])
        if not isinstance(info.get("url"), str):
            return 502, b"WhatsApp did not give the media's address", "text/plain"
        content, content_type = api.download(info["url"])
    except cloud.CloudError as e:
        return 502, e.message.encode(), "text/plain"
    return 200, content, media_part.get("mime_type") or info.get("mime_type") or content_type


@get("/whatsapp/media/{message_id:uuid}", include_in_schema=False)
async def media_download(request: Request[Any, Any, Any], message_id: UUID) -> Response[bytes]:
    status, content, mime = await _thread(request, media, message_id, request.query_params.get("expires"),
                                          request.query_params.get("sig"))
    headers = {**NO_STORE, "Content-Disposition": f"attachment; filename=\"whatsapp-{message_id}\""} if status == 200 \
        else NO_STORE
    return Response(content, status_code=status, media_type=mime, headers=headers)


whatsapp_routes = [handshake, deliver, media_download]
