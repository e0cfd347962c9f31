"""`/healthz` (the process answers) and `/readyz` (the database answers and no stream consumer is stuck).

Both answer without a token and show no tenant data: consumer names, positions, lag and counts of parked
events, never organization ids. Load balancers route by `/readyz`: 503 while the database is unreachable or a
consumer has fallen behind and stopped moving for FLUSIA_CONSUMER_STUCK_SECONDS (default 30). Parked events
alone do not make the server unready: they are isolated to their organization and reported here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import anyio
from litestar import Request, get
from litestar.response import Response

log = logging.getLogger("flusia.http")

CONSUMERS = """
SELECT t.name, t.position, extract(epoch FROM now() - t.updated_at) AS idle_seconds,
       (SELECT count(*) FROM consumer_parked p WHERE p.consumer = t.name) AS parked,
       (SELECT coalesce(max(notification_id), 0) FROM stored_events) AS head
FROM projection_tracking t ORDER BY t.name
"""


def stuck_after() -> float:
    return float(os.environ.get("FLUSIA_CONSUMER_STUCK_SECONDS", "30"))


def consumer_report(conn: Any) -> dict[str, Any]:
    """Each consumer's position, lag behind the event store's head, parked events and whether it is stuck."""
    rows = conn.execute(CONSUMERS).fetchall()
    head = rows[0]["head"] if rows else conn.execute(
        "SELECT coalesce(max(notification_id), 0) AS head FROM stored_events").fetchone()["head"]
    limit = stuck_after()
    consumers = {
        r["name"]: {"position": r["position"], "lag": head - r["position"], "parked": r["parked"],
                    "stuck": head > r["position"] and float(r["idle_seconds"]) > limit}
        for r in rows
    }
    return {"event_store_head": head, "consumers": consumers}


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    runtime = request.app.state.runtime

    def check() -> dict[str, Any]:
        with runtime.pool.connection() as conn:
            return consumer_report(conn)

    try:
        report = await anyio.to_thread.run_sync(check)
    except Exception as e:
        log.error("readiness check failed: database unreachable error=%s", type(e).__name__)
        return Response({"status": "unavailable", "database": "unreachable"}, status_code=503)
    stuck = sorted(name for name, c in report["consumers"].items() if c["stuck"])
    status = "stuck" if stuck else "ready"
    return Response({"status": status, "database": "ok", **report, **({"stuck": stuck} if stuck else {})},
                    status_code=503 if stuck else 200)


health_routes = [healthz, readyz]
