"""The merged timeline of a client or a deal, built from events so nothing is missing from it.

Activities, notes (on the client or on its deals), deal creation, status changes and stage moves become
rows of `timeline_entries`. `timeline_deals` (this projection's own lookup) remembers which client each deal
belongs to, so a deal's entries also show on its client's timeline. Stage and user names are joined at
query time, so renaming a stage does not rewrite history rows.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from psycopg.types.json import Jsonb

from domain.activities import Activity
from domain.clients import Client
from domain.deals import Deal
from domain.notes import Note
from projections.base import Projection, handles
from projections.pagination import Sort, paginate

def _event_id(e: Any) -> UUID:
    """A stable id for an entry made from a single event: the same on every rebuild."""
    return uuid5(e.originator_id, str(e.originator_version))


ENTRY_INSERT = (
    "INSERT INTO timeline_entries (id, organization_id, client_id, deal_id, kind, ref_id, activity_type, occurred_at,"
    " user_id, title, body, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class TimelineProjection(Projection):
    name = "timeline"
    tables = ("timeline_deals", "timeline_entries")
    resources = ("activities",)

    def _deal_client(self, cur: Any, deal_id: UUID | None) -> UUID | None:
        if deal_id is None:
            return None
        row = cur.execute("SELECT client_id FROM timeline_deals WHERE deal_id = %s", (deal_id,)).fetchone()
        return row["client_id"] if row else None

    def _deal_title(self, cur: Any, deal_id: UUID) -> str:
        row = cur.execute("SELECT title FROM timeline_deals WHERE deal_id = %s", (deal_id,)).fetchone()
        return row["title"] if row else "deal"

    # -- activities --------------------------------------------------------------------------------------
    @handles(Activity.Created)
    def activity_created(self, cur: Any, e: Any) -> None:
        client_id = e.client_id or self._deal_client(cur, e.deal_id)
        cur.execute(ENTRY_INSERT, (e.originator_id, e.org_id, client_id, e.deal_id, "activity", e.originator_id, e.type,
                                   e.occurred_at, e.user_id, e.subject or e.type.capitalize(), e.body, Jsonb(e.details)))

    @handles(Activity.Updated)
    def activity_updated(self, cur: Any, e: Any) -> None:
        c = e.changes
        mapping = {"occurred_at": "occurred_at", "user_id": "user_id", "subject": "title", "body": "body"}
        values = {col: c[key] for key, col in mapping.items() if key in c}
        if "title" in values and not values["title"]:
            values.pop("title")
        if "details" in c:
            values["data"] = Jsonb(c["details"])
        if values:
            sets = ", ".join(f"{k} = %({k})s" for k in values)
            cur.execute(f"UPDATE timeline_entries SET {sets} WHERE id = %(_id)s", {**values, "_id": e.originator_id})  # noqa: S608

    @handles(Activity.Deleted)
    def activity_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM timeline_entries WHERE id = %s", (e.originator_id,))

    # -- notes -------------------------------------------------------------------------------------------
    @handles(Note.Created)
    def note_created(self, cur: Any, e: Any) -> None:
        if e.subject_type == "client":
            client_id, deal_id = e.subject_id, None
        elif e.subject_type == "deal":
            client_id, deal_id = self._deal_client(cur, e.subject_id), e.subject_id
        else:
            return
        cur.execute(ENTRY_INSERT, (e.originator_id, e.org_id, client_id, deal_id, "note", e.originator_id, None,
                                   e.timestamp, e.author_id, "Note", e.body, Jsonb({})))

    @handles(Note.Edited)
    def note_edited(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE timeline_entries SET body = %s WHERE id = %s", (e.body, e.originator_id))

    @handles(Note.Deleted)
    def note_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM timeline_entries WHERE id = %s", (e.originator_id,))

    # -- deals -------------------------------------------------------------------------------------------
    @handles(Deal.Created)
    def deal_created(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO timeline_deals (deal_id, organization_id, client_id, title) VALUES (%s, %s, %s, %s)",
                    (e.originator_id, e.org_id, e.client_id, e.title))
        cur.execute(ENTRY_INSERT, (_event_id(e), e.org_id, e.client_id, e.originator_id, "deal_created", e.originator_id, None,
                                   e.timestamp, e.created_by, f"Deal created: {e.title}", None,
                                   Jsonb({"pipeline_id": str(e.pipeline_id), "stage_id": str(e.stage_id)})))

    @handles(Deal.Updated)
    def deal_updated(self, cur: Any, e: Any) -> None:
        if "title" in e.changes:
            cur.execute("UPDATE timeline_deals SET title = %s WHERE deal_id = %s", (e.changes["title"], e.originator_id))
        if "client_id" in e.changes:
            cur.execute("UPDATE timeline_deals SET client_id = %s WHERE deal_id = %s",
                        (e.changes["client_id"], e.originator_id))
            cur.execute("UPDATE timeline_entries SET client_id = %s WHERE deal_id = %s AND kind <> 'activity'",
                        (e.changes["client_id"], e.originator_id))

    @handles(Deal.StatusChanged)
    def deal_status(self, cur: Any, e: Any) -> None:
        title = {"accepted": "Deal won", "rejected": "Deal lost", "open": "Deal reopened"}[e.status]
        data = {"status": e.status, "previous": e.previous,
                "close_date": e.close_date.isoformat() if e.close_date else None, "reason": e.reason}
        cur.execute(ENTRY_INSERT, (_event_id(e), self._org(cur, e), self._deal_client(cur, e.originator_id), e.originator_id,
                                   "deal_status", e.originator_id, None, e.timestamp, None,
                                   f"{title}: {self._deal_title(cur, e.originator_id)}", e.reason, Jsonb(data)))

    @handles(Deal.StageMoved)
    def deal_stage(self, cur: Any, e: Any) -> None:
        data = {"pipeline_id": str(e.pipeline_id), "stage_id": str(e.stage_id),
                "previous_pipeline_id": str(e.previous_pipeline_id), "previous_stage_id": str(e.previous_stage_id)}
        cur.execute(ENTRY_INSERT, (_event_id(e), self._org(cur, e), self._deal_client(cur, e.originator_id), e.originator_id,
                                   "deal_stage", e.originator_id, None, e.timestamp, None,
                                   f"Stage changed: {self._deal_title(cur, e.originator_id)}", None, Jsonb(data)))

    @handles(Deal.Deleted)
    def deal_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM timeline_entries WHERE deal_id = %s AND kind IN ('deal_created', 'deal_status', 'deal_stage')",
                    (e.originator_id,))

    def _org(self, cur: Any, e: Any) -> UUID:
        return cur.execute("SELECT organization_id FROM timeline_deals WHERE deal_id = %s",
                           (e.originator_id,)).fetchone()["organization_id"]

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE timeline_entries SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))
        cur.execute("UPDATE timeline_deals SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))


def timeline(conn: Any, org_id: UUID, *, client_id: UUID | None, deal_id: UUID | None, kinds: list[str] | None,
             limit: int, cursor: str | None, client_notes: bool = True, deal_entries: bool = True):
    """One page of entries; `client_notes`/`deal_entries` False leave out notes on clients / everything about deals
    (their entries and notes), in SQL so that pages stay full."""
    where = ["t.organization_id = %s"]
    if not client_notes:
        where.append("NOT (t.kind = 'note' AND t.deal_id IS NULL)")
    if not deal_entries:
        where.append("(t.kind = 'activity' OR (t.kind = 'note' AND t.deal_id IS NULL))")
    params: list[Any] = [org_id]
    if client_id is not None:
        where.append("t.client_id = %s")
        params.append(client_id)
    if deal_id is not None:
        where.append("t.deal_id = %s")
        params.append(deal_id)
    if kinds:
        where.append("t.kind = ANY(%s)")
        params.append(kinds)
    inner = (
        "SELECT t.id, t.kind, t.ref_id, t.activity_type, t.client_id, t.deal_id, t.occurred_at, t.user_id,"
        " u.name AS user_name, t.title, t.body, t.data, s.name AS stage_name, ps.name AS previous_stage_name"
        " FROM timeline_entries t LEFT JOIN users u ON u.id = t.user_id"
        " LEFT JOIN pipeline_stages s ON t.kind IN ('deal_stage', 'deal_created') AND s.id = (t.data->>'stage_id')::uuid"
        " LEFT JOIN pipeline_stages ps ON t.kind = 'deal_stage' AND ps.id = (t.data->>'previous_stage_id')::uuid"
        " WHERE " + " AND ".join(where)
    )
    return paginate(conn, "*", f"FROM ({inner}) t WHERE true", params, Sort("occurred_at", "timestamptz", descending=True),
                    limit, cursor)
