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


PROBLEMS = {
    "expired": (410, "expired", "the download link has expired; ask for a new one"),
    "invalid": (403, "invalid_signature", "the download link is not valid"),
    "gone": (404, "not_found", "the attachment no longer exists"),
}


def _fetch(runtime: Any, attachment_id: UUID, expires: str | None, sig: str | None) -> tuple[int, Any, dict[str, str]]:
    with runtime.pool.connection() as conn:
        download = blobs.open_download(conn, attachment_id, expires, sig)
    if download.problem is not None:
        status, error, description = PROBLEMS[download.problem]
        return status, {"error": error, "error_description": description}, {}
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(download.name)}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
        "Content-Type": download.mime_type or "application/octet-stream",
    }
    return 200, download.content, headers


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
