"""Tasks read model (tasks, checklist items, attachments) and its queries."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from domain.clients import Client
from domain.custom_fields import CustomField
from domain.errors import NotFound
from domain.tasks import PRIORITIES, Task
from projections.base import Projection, exists, handles, local_date, set_columns, touch
from projections.matching import Found, search_both
from projections import custom_fields as custom_values
from projections.pagination import BY_CREATION, Sort, by_date, paginate

TASK_COLUMNS = (
    "id, title, description, status, priority, due_date, client_id, deal_id, project_id, assignee_id, tags,"
    " created_by, created_at, updated_at, completed_at, checklist_total, checklist_done, attachments_count,"
    " (SELECT business_name FROM clients c WHERE c.id = tasks.client_id) AS client_name,"
    " (SELECT title FROM deals d WHERE d.id = tasks.deal_id) AS deal_title,"
    " (SELECT name FROM projects p WHERE p.id = tasks.project_id) AS project_name,"
    " (SELECT name FROM users u WHERE u.id = tasks.assignee_id) AS assignee_name"
)
TASK_COLUMNS += f", custom_fields, {local_date('created_at')} AS created_on"
SORTS = {
    **by_date("due", "due_date"), **BY_CREATION,
    "priority_desc": Sort("array_position(ARRAY[%s], priority)" % ", ".join(f"'{p}'" for p in PRIORITIES), "integer",
                          descending=True),
}
SEARCH_REFRESH = (
    "UPDATE tasks SET search_tsv = to_tsvector('simple', lower(f_unaccent(concat_ws(' ', title, description,"
    " f_custom_text(custom_fields)))))"
    " WHERE id = %s"
)
ITEM_COLUMNS = "id, task_id, position, text, done, done_at, created_at, updated_at"
ATTACHMENT_COLUMNS = "id, task_id, name, url, sha256, size_bytes, mime_type, created_by, created_at"


class TasksProjection(Projection):
    name = "tasks"
    tables = ("tasks", "task_checklist_items", "task_attachments")
    resources = ("tasks",)


    @handles(Task.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = e.fields
        cur.execute(
            "INSERT INTO tasks (id, organization_id, title, description, status, priority, due_date, client_id, deal_id,"
            " project_id, assignee_id, created_by, created_at, updated_at, search_tsv)"
            " VALUES (%s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " to_tsvector('simple', lower(f_unaccent(concat_ws(' ', %s::text, %s::text)))))",
            (e.originator_id, e.org_id, f.get("title"), f.get("description"), f.get("priority", "normal"),
             f.get("due_date"), f.get("client_id"), f.get("deal_id"), f.get("project_id"), e.assignee_id,
             e.created_by, e.timestamp, e.timestamp, f.get("title"), f.get("description")),
        )

    @handles(Task.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "tasks", e, dict(e.changes))
        cur.execute(SEARCH_REFRESH, (e.originator_id,))

    @handles(Task.Completed)
    def completed(self, cur: Any, e: Any) -> None:
        touch(cur, "tasks", e, "status = 'done', completed_at = %s", (e.timestamp,))

    @handles(Task.Reopened)
    def reopened(self, cur: Any, e: Any) -> None:
        touch(cur, "tasks", e, "status = 'open', completed_at = NULL")

    @handles(Task.Assigned)
    def assigned(self, cur: Any, e: Any) -> None:
        touch(cur, "tasks", e, "assignee_id = %s", (e.user_id,))

    @handles(Task.Unassigned)
    def unassigned(self, cur: Any, e: Any) -> None:
        touch(cur, "tasks", e, "assignee_id = NULL")

    @handles(Task.Tagged)
    def tagged(self, cur: Any, e: Any) -> None:
        touch(cur, "tasks", e, "tags = array_append(tags, %s)", (e.tag,))

    @handles(Task.Untagged)
    def untagged(self, cur: Any, e: Any) -> None:
        touch(cur, "tasks", e, "tags = array_remove(tags, %s)", (e.tag,))

    def _recount_checklist(self, cur: Any, e: Any) -> None:
        touch(
            cur, "tasks", e,
            "checklist_total = (SELECT count(*) FROM task_checklist_items WHERE task_id = %s),"
            " checklist_done = (SELECT count(*) FROM task_checklist_items WHERE task_id = %s AND done)",
            (e.originator_id, e.originator_id),
        )

    @handles(Task.ChecklistItemAdded)
    def item_added(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO task_checklist_items (id, organization_id, task_id, position, text, done, done_at, created_at,"
            " updated_at) SELECT %s, organization_id, id, %s, %s, %s, %s, %s, %s FROM tasks WHERE id = %s",
            (e.item_id, e.position, e.text, e.done, e.timestamp if e.done else None, e.timestamp, e.timestamp,
             e.originator_id),
        )
        self._recount_checklist(cur, e)

    @handles(Task.ChecklistItemRenamed)
    def item_renamed(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE task_checklist_items SET text = %s, updated_at = %s WHERE id = %s",
                    (e.text, e.timestamp, e.item_id))
        touch(cur, "tasks", e)

    @handles(Task.ChecklistItemTicked)
    def item_ticked(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE task_checklist_items SET done = %s, done_at = %s, updated_at = %s WHERE id = %s",
                    (e.done, e.timestamp if e.done else None, e.timestamp, e.item_id))
        self._recount_checklist(cur, e)

    @handles(Task.ChecklistItemRemoved)
    def item_removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM task_checklist_items WHERE id = %s", (e.item_id,))
        self._recount_checklist(cur, e)

    @handles(Task.AttachmentAdded)
    def attached(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO task_attachments (id, organization_id, task_id, name, url, sha256, size_bytes, mime_type,"
            " created_by, created_at) SELECT %s, organization_id, id, %s, %s, %s, %s, %s, %s, %s FROM tasks WHERE id = %s",
            (e.attachment_id, e.name, e.url, e.sha256, e.size_bytes, e.mime_type, e.added_by, e.timestamp,
             e.originator_id),
        )
        touch(cur, "tasks", e, "attachments_count = attachments_count + 1")

    @handles(Task.AttachmentRemoved)
    def detached(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM task_attachments WHERE id = %s", (e.attachment_id,))
        touch(cur, "tasks", e, "attachments_count = greatest(attachments_count - 1, 0)")

    @handles(Task.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM tasks WHERE id = %s", (e.originator_id,))

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        """Tasks of a merged duplicate move over to the survivor."""
        cur.execute("UPDATE tasks SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))


    @handles(Task.CustomFieldsChanged)
    def custom_fields_changed(self, cur: Any, e: Any) -> None:
        custom_values.apply(cur, "tasks", e)
        cur.execute(SEARCH_REFRESH, (e.originator_id,))

    @handles(CustomField.Deleted)
    def custom_field_deleted(self, cur: Any, e: Any) -> None:
        """A deleted custom field's values leave the read model (the events keep them)."""
        for row_id in custom_values.hide(cur, "tasks", "task", e):
            cur.execute(SEARCH_REFRESH, (row_id,))


def _filters(org_id: UUID, *, today: date, assignee_id: UUID | None = None, client_id: UUID | None = None,
             deal_id: UUID | None = None, project_id: UUID | None = None, status: str | None = None,
             tag: str | None = None, due: str | None = None, due_from: date | None = None,
             due_to: date | None = None, unassigned: bool = False,
             custom: dict[str, Any] | None = None) -> tuple[list[str], list[Any]]:
    where = ["organization_id = %s"]
    params: list[Any] = [org_id]
    for column, value in (("assignee_id", assignee_id), ("client_id", client_id), ("deal_id", deal_id),
                          ("project_id", project_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if status is not None:  # literal, so the partial index on open tasks applies
        where.append("status = 'open'" if status == "open" else "status = 'done'")
    if unassigned:
        where.append("assignee_id IS NULL")
    if tag is not None:
        where.append("tags @> ARRAY[%s]")
        params.append(tag)
    if due == "overdue":
        where.append("status = 'open' AND coalesce(due_date, '9999-12-31'::date) < %s")
        params.append(today)
    elif due == "today":
        where.append("due_date = %s")
        params.append(today)
    elif due == "due_soon":
        where.append("status = 'open' AND due_date BETWEEN %s AND %s + 7")
        params += [today, today]
    elif due == "none":
        where.append("due_date IS NULL")
    if due_from is not None:
        where.append("due_date >= %s")
        params.append(due_from)
    if due_to is not None:
        where.append("due_date <= %s")
        params.append(due_to)
    if (contains := custom_values.containment(custom)) is not None:
        where.append(contains[0])
        params += contains[1]
    return where, params


def list_tasks(conn: Any, org_id: UUID, *, sort: str = "due_asc", limit: int = 25, cursor: str | None = None,
               **filters: Any):
    where, params = _filters(org_id, **filters)
    return paginate(conn, TASK_COLUMNS, "FROM tasks WHERE " + " AND ".join(where), params, SORTS[sort], limit, cursor)


def search_tasks(conn: Any, org_id: UUID, text: str, *, status: str | None = None, limit: int = 25) -> Found:
    """Words of title and description, accent- and case-insensitive, prefixes allowed; best match first; when
    no task has every word, those with any (see projections.matching)."""
    return search_both(lambda tsq: conn.execute(
        f"SELECT {TASK_COLUMNS}, round(ts_rank(search_tsv, q)::numeric, 4)::float AS score"
        " FROM tasks, to_tsquery('simple', lower(f_unaccent(%s))) q"
        " WHERE organization_id = %s AND search_tsv @@ q AND (%s::text IS NULL OR status = %s)"
        " ORDER BY score DESC, created_at DESC, id LIMIT %s",
        (tsq, org_id, status, status, limit),
    ).fetchall(), text)


def get_task(conn: Any, org_id: UUID, task_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE organization_id = %s AND id = %s", (org_id, task_id)).fetchone()
    if row is None:
        raise NotFound("task", task_id, field="task_id")
    return row


def list_checklist(conn: Any, org_id: UUID, task_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM task_checklist_items WHERE organization_id = %s AND task_id = %s"
        " ORDER BY position, id", (org_id, task_id)).fetchall()


def get_checklist_item(conn: Any, org_id: UUID, item_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM task_checklist_items WHERE organization_id = %s AND id = %s",
                       (org_id, item_id)).fetchone()
    if row is None:
        raise NotFound("checklist item", item_id, field="item_id")
    return row


def list_attachments(conn: Any, org_id: UUID, task_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {ATTACHMENT_COLUMNS} FROM task_attachments WHERE organization_id = %s AND task_id = %s"
        " ORDER BY created_at, id", (org_id, task_id)).fetchall()


def get_attachment(conn: Any, org_id: UUID | None, attachment_id: UUID) -> dict[str, Any] | None:
    """One attachment; with org_id None (a signed download link already proves access) any organization."""
    return conn.execute(
        f"SELECT {ATTACHMENT_COLUMNS}, organization_id FROM task_attachments"
        " WHERE id = %s AND (%s::uuid IS NULL OR organization_id = %s)", (attachment_id, org_id, org_id)).fetchone()


def tag_counts(conn: Any, org_id: UUID, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT tag, count(*)::int AS count FROM tasks, unnest(tags) AS tag"
        " WHERE organization_id = %s AND (%s::text IS NULL OR status = %s)"
        " GROUP BY tag ORDER BY count(*) DESC, tag LIMIT %s", (org_id, status, status, limit)).fetchall()


def task_exists(conn: Any, org_id: UUID, task_id: UUID) -> bool:
    return exists(conn, "tasks", org_id, task_id)
