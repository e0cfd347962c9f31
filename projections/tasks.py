"""Tasks read model and its queries."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from domain.clients import Client
from domain.errors import NotFound
from domain.tasks import Task
from projections.base import Projection, handles
from projections.pagination import Sort, paginate

TASK_COLUMNS = (
    "id, title, description, status, priority, due_date, client_id, deal_id, project_id, assignee_id, tags,"
    " created_by, created_at, updated_at, completed_at"
)
SORTS = {
    "due_asc": Sort("coalesce(due_date, 'infinity'::date)", "date"),
    "due_desc": Sort("coalesce(due_date, '-infinity'::date)", "date", descending=True),
    "created_desc": Sort("created_at", "timestamptz", descending=True),
    "created_asc": Sort("created_at", "timestamptz"),
}


class TasksProjection(Projection):
    name = "tasks"
    tables = ("tasks",)

    @handles(Task.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = e.fields
        cur.execute(
            "INSERT INTO tasks (id, organization_id, title, description, status, priority, due_date, client_id, deal_id,"
            " project_id, assignee_id, created_by, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, f.get("title"), f.get("description"), f.get("priority", "normal"),
             f.get("due_date"), f.get("client_id"), f.get("deal_id"), f.get("project_id"), e.assignee_id,
             e.created_by, e.timestamp, e.timestamp),
        )

    @handles(Task.Tagged)
    def tagged(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE tasks SET tags = array_append(tags, %s), updated_at = %s WHERE id = %s",
                    (e.tag, e.timestamp, e.originator_id))

    @handles(Task.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM tasks WHERE id = %s", (e.originator_id,))

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        """Tasks of a merged duplicate move over to the survivor."""
        cur.execute("UPDATE tasks SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))


def list_tasks(conn: Any, org_id: UUID, *, today: date, assignee_id: UUID | None = None, client_id: UUID | None = None,
               deal_id: UUID | None = None, project_id: UUID | None = None, status: str | None = None,
               tag: str | None = None, due: str | None = None, due_from: date | None = None, due_to: date | None = None,
               sort: str = "due_asc", limit: int = 25, cursor: str | None = None):
    where = ["organization_id = %s"]
    params: list[Any] = [org_id]
    for column, value in (("assignee_id", assignee_id), ("client_id", client_id), ("deal_id", deal_id),
                          ("project_id", project_id), ("status", status)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if tag is not None:
        where.append("tags @> ARRAY[%s]")
        params.append(tag)
    if due == "overdue":
        where.append("status = 'open' AND due_date < %s")
        params.append(today)
    elif due == "today":
        where.append("due_date = %s")
        params.append(today)
    elif due == "none":
        where.append("due_date IS NULL")
    if due_from is not None:
        where.append("due_date >= %s")
        params.append(due_from)
    if due_to is not None:
        where.append("due_date <= %s")
        params.append(due_to)
    return paginate(conn, TASK_COLUMNS, "FROM tasks WHERE " + " AND ".join(where), params, SORTS[sort], limit, cursor)


def get_task(conn: Any, org_id: UUID, task_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE organization_id = %s AND id = %s", (org_id, task_id)).fetchone()
    if row is None:
        raise NotFound("task", task_id, field="task_id")
    return row
