"""Activities read model (calls, meetings, e-mails, notes) and its queries."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from domain.activities import Activity
from domain.clients import Client
from domain.errors import NotFound
from projections.base import Projection, handles, set_columns
from projections.pagination import Sort, paginate

ACTIVITY_COLUMNS = ("id, type, client_id, deal_id, user_id, (SELECT name FROM users WHERE users.id = user_id) AS user_name,"
                    " occurred_at, subject, body, details, created_by, created_at, updated_at")


class ActivitiesProjection(Projection):
    name = "activities"
    tables = ("activities",)
    resources = ("activities",)

    @handles(Activity.Created)
    def created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO activities (id, organization_id, type, client_id, deal_id, user_id, occurred_at, subject, body,"
            " details, created_by, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.type, e.client_id, e.deal_id, e.user_id, e.occurred_at, e.subject, e.body,
             Jsonb(e.details), e.created_by, e.timestamp, e.timestamp),
        )

    @handles(Activity.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "activities", e, {k: (Jsonb(v) if k == "details" else v) for k, v in e.changes.items()})

    @handles(Activity.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM activities WHERE id = %s", (e.originator_id,))

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE activities SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))


def get_activity(conn: Any, org_id: UUID, activity_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {ACTIVITY_COLUMNS} FROM activities WHERE organization_id = %s AND id = %s",
                       (org_id, activity_id)).fetchone()
    if row is None:
        raise NotFound("activity", activity_id, field="activity_id")
    return row


def list_activities(conn: Any, org_id: UUID, *, filters: dict[str, Any], limit: int, cursor: str | None):
    where = ["organization_id = %s"]
    params: list[Any] = [org_id]
    for column in ("type", "client_id", "deal_id", "user_id"):
        if filters.get(column) is not None:
            where.append(f"{column} = %s")
            params.append(filters[column])
    if filters.get("occurred_from") is not None:
        where.append("occurred_at >= %s")
        params.append(filters["occurred_from"])
    if filters.get("occurred_to") is not None:
        where.append("occurred_at < %s")
        params.append(filters["occurred_to"])
    return paginate(conn, ACTIVITY_COLUMNS, "FROM activities WHERE " + " AND ".join(where), params,
                    Sort("occurred_at", "timestamptz", descending=True), limit, cursor)
