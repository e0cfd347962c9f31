"""`GET /attachments/{id}?expires=..&sig=..`: serves stored task attachment content behind an expiring signed link.

The signature (see application.attachments) is the only credential: links are handed out by
crm_tasks_get / crm_tasks_list_attachments to callers allowed to read the task.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from uuid import UUID

import anyio
from litestar import Request, get
from litestar.response import Response

from application import attachments as blobs
from projections import tasks as tasks_q


def _fetch(runtime: Any, attachment_id: UUID, expires: str | None, sig: str | None) -> tuple[int, Any, dict[str, str]]:
    with runtime.pool.connection() as conn:
        problem = blobs.check_link(blobs.link_secret(conn), attachment_id, expires, sig)
        if problem == "expired":
            return 410, {"error": "expired", "error_description": "the download link has expired; ask for a new one"}, {}
        if problem is not None:
            return 403, {"error": "invalid_signature", "error_description": "the download link is not valid"}, {}
        row = tasks_q.get_attachment(conn, None, attachment_id)
        content = blobs.load_blob(conn, row["organization_id"], row["sha256"]) if row and row["sha256"] else None
    if content is None:
        return 404, {"error": "not_found", "error_description": "the attachment no longer exists"}, {}
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row['name'])}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
        "Content-Type": row["mime_type"] or "application/octet-stream",
    }
    return 200, content, headers


@get("/attachments/{attachment_id:uuid}")
async def download_route(request: Request[Any, Any, Any], attachment_id: UUID) -> Response[Any]:
    runtime = request.app.state.runtime
    status, body, headers = await anyio.to_thread.run_sync(
        _fetch, runtime, attachment_id, request.query_params.get("expires"), request.query_params.get("sig"),
        limiter=runtime.runner.limiter,
    )
    if status != 200:
        return Response(body, status_code=status)
    media_type = headers.pop("Content-Type")
    return Response(body, status_code=200, headers=headers, media_type=media_type)
