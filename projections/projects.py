"""Projects read model (projects, members, activity log) and its queries."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from domain.custom_fields import CustomField
from domain.errors import NotFound
from domain.projects import Project
from projections.base import Projection, exists, handles, set_columns, touch
from projections import custom_fields as custom_values
from projections.pagination import NEWEST, by_date, by_name, paginate

PROJECT_COLUMNS = (
    "id, name, description, client_id, deal_id, status, archived, archived_at, start_date, end_date, budget_cents,"
    " currency, created_by, created_at, updated_at"
)
PROJECT_COLUMNS += ", custom_fields"
FIELD_COLUMNS = ("name", "description", "client_id", "deal_id", "status", "start_date", "end_date", "budget_cents", "currency")
SORTS = {
    "created_desc": NEWEST, "name_asc": by_name("name")["name_asc"], "end_asc": by_date("end", "end_date")["end_asc"],
}


class ProjectsProjection(Projection):
    name = "projects"
    tables = ("projects", "project_members", "project_activities")
    resources = ("projects",)


    def _system(self, cur: Any, e: Any, text: str) -> None:
        """Changes that matter to the team show up in the project's activity log too."""
        cur.execute(
            "INSERT INTO project_activities (id, organization_id, project_id, kind, text, created_at)"
            " SELECT md5(%s || ':' || %s)::uuid, organization_id, id, 'system', %s, %s FROM projects WHERE id = %s",
            (str(e.originator_id), e.originator_version, text, e.timestamp, e.originator_id),
        )

    @handles(Project.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = {c: e.fields.get(c) for c in FIELD_COLUMNS}
        cur.execute(
            "INSERT INTO projects (id, organization_id, name, description, client_id, deal_id, status, start_date,"
            " end_date, budget_cents, currency, created_by, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, f["name"], f["description"], f["client_id"], f["deal_id"],
             f["status"] or "active", f["start_date"], f["end_date"], f["budget_cents"], f["currency"], e.created_by,
             e.timestamp, e.timestamp),
        )
        self._system(cur, e, "project created")

    @handles(Project.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        changes = dict(e.changes)
        set_columns(cur, "projects", e, changes)
        if "status" in changes:
            self._system(cur, e, f"status changed to {changes['status']}")

    @handles(Project.Archived)
    def archived(self, cur: Any, e: Any) -> None:
        touch(cur, "projects", e, "archived = true, archived_at = %s", (e.timestamp,))
        self._system(cur, e, "project archived")

    @handles(Project.Unarchived)
    def unarchived(self, cur: Any, e: Any) -> None:
        touch(cur, "projects", e, "archived = false, archived_at = NULL")
        self._system(cur, e, "project unarchived")

    @handles(Project.MemberAssigned)
    def member_assigned(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO project_members (organization_id, project_id, user_id, role, added_at)"
            " SELECT organization_id, id, %s, %s, %s FROM projects WHERE id = %s"
            " ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            (e.user_id, e.role, e.timestamp, e.originator_id),
        )
        touch(cur, "projects", e)
        self._system(cur, e, f"member {e.user_id} added as {e.role}")

    @handles(Project.MemberUnassigned)
    def member_unassigned(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM project_members WHERE project_id = %s AND user_id = %s", (e.originator_id, e.user_id))
        touch(cur, "projects", e)
        self._system(cur, e, f"member {e.user_id} removed")

    @handles(Project.BriefUpdated)
    def brief_updated(self, cur: Any, e: Any) -> None:
        touch(cur, "projects", e, "brief = brief || %s, brief_updated_at = %s", (Jsonb(dict(e.changes)), e.timestamp))
        self._system(cur, e, "brief updated: " + ", ".join(sorted(e.changes)))

    @handles(Project.ActivityLogged)
    def activity_logged(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO project_activities (id, organization_id, project_id, kind, text, minutes, occurred_on,"
            " author_id, created_at) SELECT %s, organization_id, id, %s, %s, %s, %s, %s, %s FROM projects WHERE id = %s",
            (e.activity_id, e.kind, e.text, e.minutes, e.occurred_on, e.author_id, e.timestamp, e.originator_id),
        )
        touch(cur, "projects", e)

    @handles(Project.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM projects WHERE id = %s", (e.originator_id,))


    @handles(Project.CustomFieldsChanged)
    def custom_fields_changed(self, cur: Any, e: Any) -> None:
        custom_values.apply(cur, "projects", e)

    @handles(CustomField.Deleted)
    def custom_field_deleted(self, cur: Any, e: Any) -> None:
        """A deleted custom field's values leave the read model (the events keep them)."""
        custom_values.hide(cur, "projects", "project", e)


# -- queries ---------------------------------------------------------------------------------------------
def list_projects(conn: Any, org_id: UUID, *, status: str | None = None, client_id: UUID | None = None,
                  member_id: UUID | None = None, archived: bool = False, sort: str = "created_desc",
                  limit: int = 25, cursor: str | None = None, custom: dict[str, Any] | None = None):
    where = ["organization_id = %s", "archived = %s"]
    params: list[Any] = [org_id, archived]
    for column, value in (("status", status), ("client_id", client_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if member_id is not None:
        where.append("id IN (SELECT project_id FROM project_members WHERE organization_id = %s AND user_id = %s)")
        params += [org_id, member_id]
    if (contains := custom_values.containment(custom)) is not None:
        where.append(contains[0])
        params += contains[1]
    return paginate(conn, PROJECT_COLUMNS, "FROM projects WHERE " + " AND ".join(where), params, SORTS[sort], limit, cursor)


def get_project(conn: Any, org_id: UUID, project_id: UUID, *, today: Any) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {PROJECT_COLUMNS}, brief, brief_updated_at,"
        " (SELECT count(*) FROM tasks t WHERE t.organization_id = p.organization_id AND t.project_id = p.id)::int AS tasks_count,"
        " (SELECT count(*) FROM tasks t WHERE t.organization_id = p.organization_id AND t.project_id = p.id"
        "   AND t.status = 'open')::int AS open_tasks_count,"
        " (SELECT count(*) FROM tasks t WHERE t.organization_id = p.organization_id AND t.project_id = p.id"
        "   AND t.status = 'open' AND t.due_date < %s)::int AS overdue_tasks_count,"
        " (SELECT count(*) FROM project_activities a WHERE a.project_id = p.id)::int AS activities_count,"
        " (SELECT coalesce(sum(minutes), 0) FROM project_activities a WHERE a.project_id = p.id)::int AS logged_minutes"
        " FROM projects p WHERE p.organization_id = %s AND p.id = %s",
        (today, org_id, project_id),
    ).fetchone()
    if row is None:
        raise NotFound("project", project_id, field="project_id")
    row["members"] = list_members(conn, org_id, project_id)
    return row


def project_exists(conn: Any, org_id: UUID, project_id: UUID) -> bool:
    return exists(conn, "projects", org_id, project_id)


def get_brief(conn: Any, org_id: UUID, project_id: UUID) -> dict[str, Any]:
    row = conn.execute("SELECT id AS project_id, brief, brief_updated_at FROM projects WHERE organization_id = %s AND id = %s",
                       (org_id, project_id)).fetchone()
    if row is None:
        raise NotFound("project", project_id, field="project_id")
    return row


def list_members(conn: Any, org_id: UUID, project_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT m.user_id, m.role, m.added_at, u.name, u.email FROM project_members m"
        " LEFT JOIN users u ON u.id = m.user_id WHERE m.organization_id = %s AND m.project_id = %s"
        " ORDER BY m.added_at, m.user_id", (org_id, project_id)).fetchall()


LOG_ENTRY_COLUMNS = "id, project_id, kind, text, minutes, occurred_on, author_id, created_at"


def list_log_entries(conn: Any, org_id: UUID, project_id: UUID, *, kind: str | None, limit: int, cursor: str | None):
    """The project's activity log (table project_activities): worklogs, milestones, comments, system entries."""
    where = "FROM project_activities WHERE organization_id = %s AND project_id = %s"
    params: list[Any] = [org_id, project_id]
    if kind is not None:
        where += " AND kind = %s"
        params.append(kind)
    return paginate(conn, LOG_ENTRY_COLUMNS, where, params, NEWEST, limit,
                    cursor)


def get_log_entry(conn: Any, org_id: UUID, entry_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {LOG_ENTRY_COLUMNS} FROM project_activities WHERE organization_id = %s AND id = %s",
                       (org_id, entry_id)).fetchone()
    if row is None:
        raise NotFound("activity", entry_id, field="activity_id")
    return row
