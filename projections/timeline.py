"""The merged timeline of a client or a deal, built from events so nothing is missing from it.

Activities, notes (on the client or on its deals), deal creation, status, stage, value and owner changes and
deletion, the client's own status, owner, conversion and deletion, and its tasks (created, done, reopened,
assigned, deleted) become rows of `timeline_entries`. Deleting a deal or a client leaves its history and adds
an entry saying so. `timeline_deals` and `timeline_tasks` (this projection's own lookups) remember which client
each deal and task belongs to, so their entries also show on the client's timeline. Every entry keeps its
event's notification id: who did it (user, API token or OAuth client) and stage and user names are joined at
query time, so renaming a stage does not rewrite history rows.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from psycopg.types.json import Jsonb

from domain.activities import Activity
from domain.clients import Client
from domain.deals import Deal
from domain.money import format_money
from domain.notes import Note
from domain.personal_data import ERASED
from domain.tasks import Task
from projections.base import Projection, handles
from projections.pagination import Sort, paginate

def _event_id(e: Any) -> UUID:
    """A stable id for an entry made from a single event: the same on every rebuild."""
    return uuid5(e.originator_id, str(e.originator_version))


ENTRY_INSERT = (
    "INSERT INTO timeline_entries (id, organization_id, client_id, deal_id, kind, ref_id, activity_type, occurred_at,"
    " user_id, title, body, data, notification_id, task_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    # An entry's id is its event's (_event_id): the same entry again is a replay (a restore replaying what its
    # client's restore already replayed), which makes it as the event says.
    " ON CONFLICT (id) DO UPDATE SET organization_id = EXCLUDED.organization_id, client_id = EXCLUDED.client_id,"
    " deal_id = EXCLUDED.deal_id, kind = EXCLUDED.kind, ref_id = EXCLUDED.ref_id,"
    " activity_type = EXCLUDED.activity_type, occurred_at = EXCLUDED.occurred_at, user_id = EXCLUDED.user_id,"
    " title = EXCLUDED.title, body = EXCLUDED.body, data = EXCLUDED.data, notification_id = EXCLUDED.notification_id,"
    " task_id = EXCLUDED.task_id"
)


class TimelineProjection(Projection):
    name = "timeline"
    tables = ("timeline_deals", "timeline_tasks", "timeline_entries")
    resources = ("activities",)
    restore_by_replay = (Activity, Note)  # their entries are theirs; a deal's, client's or task's are its history

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
                                   e.occurred_at, e.user_id, e.subject or e.type.capitalize(), e.body, Jsonb(e.details),
                                   self.notification_id, None))

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
                                   e.timestamp, e.author_id, "Note", e.body, Jsonb({}), self.notification_id, None))

    @handles(Note.Edited)
    def note_edited(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE timeline_entries SET body = %s WHERE id = %s", (e.body, e.originator_id))

    @handles(Note.Deleted)
    def note_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM timeline_entries WHERE id = %s", (e.originator_id,))

    # -- deals -------------------------------------------------------------------------------------------
    @handles(Deal.Created)
    def deal_created(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO timeline_deals (deal_id, organization_id, client_id, title, value_cents, currency,"
                    " owner_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (e.originator_id, e.org_id, e.client_id, e.title, e.explicit_value_cents or 0, e.currency, e.owner_id))
        cur.execute(ENTRY_INSERT, (_event_id(e), e.org_id, e.client_id, e.originator_id, "deal_created", e.originator_id, None,
                                   e.timestamp, e.created_by, f"Deal created: {e.title}", None,
                                   Jsonb({"pipeline_id": str(e.pipeline_id), "stage_id": str(e.stage_id)}),
                                   self.notification_id, None))

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
                                   f"{title}: {self._deal_title(cur, e.originator_id)}", e.reason, Jsonb(data),
                                   self.notification_id, None))

    @handles(Deal.StageMoved)
    def deal_stage(self, cur: Any, e: Any) -> None:
        data = {"pipeline_id": str(e.pipeline_id), "stage_id": str(e.stage_id),
                "previous_pipeline_id": str(e.previous_pipeline_id), "previous_stage_id": str(e.previous_stage_id)}
        cur.execute(ENTRY_INSERT, (_event_id(e), self._org(cur, e), self._deal_client(cur, e.originator_id), e.originator_id,
                                   "deal_stage", e.originator_id, None, e.timestamp, None,
                                   f"Stage changed: {self._deal_title(cur, e.originator_id)}", None, Jsonb(data),
                                   self.notification_id, None))

    @handles(Deal.ValueSet, Deal.ServiceAdded, Deal.ServiceUpdated, Deal.ServiceRemoved)
    def deal_value(self, cur: Any, e: Any) -> None:
        deal = cur.execute("SELECT value_cents, currency, title FROM timeline_deals WHERE deal_id = %s",
                           (e.originator_id,)).fetchone()
        if deal is None or deal["value_cents"] == e.value_cents:
            return
        cur.execute("UPDATE timeline_deals SET value_cents = %s WHERE deal_id = %s", (e.value_cents, e.originator_id))
        self._deal_entry(cur, e, "deal_value", f"Value changed: {deal['title']}",
                         {"value_cents": e.value_cents, "previous_cents": deal["value_cents"],
                          "value": format_money(e.value_cents, deal["currency"]),
                          "previous": format_money(deal["value_cents"], deal["currency"])})

    @handles(Deal.Assigned, Deal.Unassigned)
    def deal_owner(self, cur: Any, e: Any) -> None:
        owner = getattr(e, "user_id", None)
        cur.execute("UPDATE timeline_deals SET owner_id = %s WHERE deal_id = %s", (owner, e.originator_id))
        self._deal_entry(cur, e, "deal_owner", f"Owner {'changed' if owner else 'removed'}: "
                         f"{self._deal_title(cur, e.originator_id)}", {"owner_id": str(owner) if owner else None})

    @handles(Deal.Deleted)
    def deal_deleted(self, cur: Any, e: Any) -> None:
        """The deal's history stays; an entry says it was deleted (and by whom, from its cause)."""
        self._deal_entry(cur, e, "deal_deleted", f"Deal deleted: {self._deal_title(cur, e.originator_id)}", {})

    def _deal_entry(self, cur: Any, e: Any, kind: str, title: str, data: dict[str, Any]) -> None:
        cur.execute(ENTRY_INSERT, (_event_id(e), self._org(cur, e), self._deal_client(cur, e.originator_id),
                                   e.originator_id, kind, e.originator_id, None, e.timestamp, None, title, None,
                                   Jsonb(data), self.notification_id, None))

    # -- the client itself -------------------------------------------------------------------------------
    @handles(Client.StatusChanged, Client.ConvertedToClient, Client.Assigned, Client.Unassigned, Client.Deleted)
    def client_changed(self, cur: Any, e: Any) -> None:
        kind, title, data = {
            "StatusChanged": lambda: ("client_status", f"Status: {getattr(e, 'status', '')}",
                                      {"status": getattr(e, "status", None), "previous": getattr(e, "previous", None)}),
            "ConvertedToClient": lambda: ("client_converted", "Converted to client", {}),
            "Assigned": lambda: ("client_owner", "Assigned", {"user_id": str(getattr(e, "user_id", ""))}),
            "Unassigned": lambda: ("client_owner", "Unassigned", {}),
            "Deleted": lambda: ("client_deleted", "Deleted", {}),
        }[type(e).__name__]()
        org_id = self._client_org(cur, e)  # its creation's entry, by index; else any entry of the client
        if org_id is None:
            org = cur.execute("SELECT organization_id FROM timeline_entries WHERE client_id = %s LIMIT 1",
                              (e.originator_id,)).fetchone()
            org_id = org["organization_id"] if org else None
        if org_id is None:
            return
        cur.execute(ENTRY_INSERT, (_event_id(e), org_id, e.originator_id, None, kind, e.originator_id, None,
                                   e.timestamp, None, title, None, Jsonb(data), self.notification_id, None))

    @handles(Client.Created)
    def client_created(self, cur: Any, e: Any) -> None:
        cur.execute(ENTRY_INSERT, (_event_id(e), e.org_id, e.originator_id, None, "client_created", e.originator_id,
                                   None, e.timestamp, e.created_by, f"{e.kind.capitalize()} created",
                                   None, Jsonb({}), self.notification_id, None))

    def _client_org(self, cur: Any, e: Any) -> UUID | None:
        row = cur.execute("SELECT organization_id FROM timeline_entries WHERE ref_id = %s AND kind = 'client_created'",
                          (e.originator_id,)).fetchone()
        return row["organization_id"] if row else None

    # -- tasks -------------------------------------------------------------------------------------------
    @handles(Task.Created)
    def task_created(self, cur: Any, e: Any) -> None:
        f = e.fields
        client_id = f.get("client_id") or self._deal_client(cur, f.get("deal_id"))
        cur.execute("INSERT INTO timeline_tasks (task_id, organization_id, client_id, deal_id, title)"
                    " VALUES (%s, %s, %s, %s, %s)", (e.originator_id, e.org_id, client_id, f.get("deal_id"), f["title"]))
        if client_id or f.get("deal_id"):
            cur.execute(ENTRY_INSERT, (_event_id(e), e.org_id, client_id, f.get("deal_id"), "task_created",
                                       e.originator_id, None, e.timestamp, e.created_by, f"Task: {f['title']}", None,
                                       Jsonb({"due_date": str(f["due_date"]) if f.get("due_date") else None}),
                                       self.notification_id, e.originator_id))

    @handles(Task.Updated)
    def task_updated(self, cur: Any, e: Any) -> None:
        c = e.changes
        if "title" in c:
            cur.execute("UPDATE timeline_tasks SET title = %s WHERE task_id = %s", (c["title"], e.originator_id))
        if "client_id" in c or "deal_id" in c:
            sets, params = [], []
            for column in ("client_id", "deal_id"):
                if column in c:
                    sets.append(f"{column} = %s")
                    params.append(c[column])
            cur.execute(f"UPDATE timeline_tasks SET {', '.join(sets)} WHERE task_id = %s",  # noqa: S608
                        (*params, e.originator_id))

    @handles(Task.Completed, Task.Reopened, Task.Assigned, Task.Unassigned, Task.Deleted)
    def task_changed(self, cur: Any, e: Any) -> None:
        task = cur.execute("SELECT organization_id, client_id, deal_id, title FROM timeline_tasks WHERE task_id = %s",
                           (e.originator_id,)).fetchone()
        if task is None or (task["client_id"] is None and task["deal_id"] is None):
            return
        kind, title = {"Completed": ("task_done", "Task done"), "Reopened": ("task_reopened", "Task reopened"),
                       "Assigned": ("task_owner", "Task assigned"), "Unassigned": ("task_owner", "Task unassigned"),
                       "Deleted": ("task_deleted", "Task deleted")}[type(e).__name__]
        data = {"user_id": str(e.user_id)} if hasattr(e, "user_id") else {}
        cur.execute(ENTRY_INSERT, (_event_id(e), task["organization_id"], task["client_id"], task["deal_id"], kind,
                                   e.originator_id, None, e.timestamp, None, f"{title}: {task['title']}", None,
                                   Jsonb(data), self.notification_id, e.originator_id))

    def _org(self, cur: Any, e: Any) -> UUID:
        return cur.execute("SELECT organization_id FROM timeline_deals WHERE deal_id = %s",
                           (e.originator_id,)).fetchone()["organization_id"]

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE timeline_entries SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))
        cur.execute("UPDATE timeline_deals SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))
        cur.execute("UPDATE timeline_tasks SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))

    @handles(Client.PersonalDataErased)
    def client_erased(self, cur: Any, e: Any) -> None:
        """Notes about a person whose data was erased (application/personal_data.py) read as erased."""
        cur.execute("UPDATE timeline_entries SET body = %s WHERE client_id = %s AND kind = 'note' AND deal_id IS NULL"
                    " AND body IS NOT NULL", (ERASED, e.originator_id))


CLIENT_KINDS = ("client_created", "client_status", "client_converted", "client_owner", "client_deleted")
TASK_KINDS = ("task_created", "task_done", "task_reopened", "task_owner", "task_deleted")
DEAL_KINDS = ("deal_created", "deal_status", "deal_stage", "deal_value", "deal_owner", "deal_deleted")


def timeline(conn: Any, org_id: UUID, *, client_id: UUID | None, deal_id: UUID | None, kinds: list[str] | None,
             limit: int, cursor: str | None, client_notes: bool = True, deal_entries: bool = True,
             client_entries: bool = True, task_entries: bool = True):
    """One page of entries; the flags False leave out notes on clients, everything about deals (their entries and
    notes), the client's own changes, tasks — in SQL so that pages stay full."""
    where = ["t.organization_id = %s"]
    if not client_notes:
        where.append("NOT (t.kind = 'note' AND t.deal_id IS NULL)")
    if not deal_entries:
        where.append("NOT (t.kind = ANY(%(deal_kinds)s) OR (t.kind = 'note' AND t.deal_id IS NOT NULL))"
                     .replace("%(deal_kinds)s", "ARRAY[" + ",".join(f"'{k}'" for k in DEAL_KINDS) + "]"))
    if not client_entries:
        where.append("NOT t.kind = ANY(ARRAY[" + ",".join(f"'{k}'" for k in CLIENT_KINDS) + "])")
    if not task_entries:
        where.append("NOT t.kind = ANY(ARRAY[" + ",".join(f"'{k}'" for k in TASK_KINDS) + "])")
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
        "SELECT t.id, t.kind, t.ref_id, t.activity_type, t.client_id, t.deal_id, t.task_id, t.occurred_at,"
        " coalesce(t.user_id, c.user_id) AS user_id, u.name AS user_name, tok.name AS token_name,"
        " oc.client_name AS oauth_client_name, t.title, t.body, t.data, s.name AS stage_name,"
        " ps.name AS previous_stage_name"
        " FROM timeline_entries t"
        " LEFT JOIN LATERAL (SELECT user_id, token_id, oauth_client_id FROM event_causes"
        "   WHERE t.notification_id IS NOT NULL AND first_notification_id <= t.notification_id"
        "   AND last_notification_id >= t.notification_id ORDER BY first_notification_id DESC LIMIT 1) c ON true"
        " LEFT JOIN users u ON u.id = coalesce(t.user_id, c.user_id)"
        " LEFT JOIN api_tokens tok ON tok.id = c.token_id"
        " LEFT JOIN oauth_clients oc ON oc.client_id = c.oauth_client_id"
        " LEFT JOIN pipeline_stages s ON t.kind IN ('deal_stage', 'deal_created') AND s.id = (t.data->>'stage_id')::uuid"
        " LEFT JOIN pipeline_stages ps ON t.kind = 'deal_stage' AND ps.id = (t.data->>'previous_stage_id')::uuid"
        " WHERE " + " AND ".join(where)
    )
    return paginate(conn, "*", f"FROM ({inner}) t WHERE true", params, Sort("occurred_at", "timestamptz", descending=True),
                    limit, cursor)
