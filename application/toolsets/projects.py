"""Projects: the `crm_projects_*` tools (members, brief, activity log, archive, tasks)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application.handlers import entity_command
from application.identity import ensure_user
from application.organization import org_today
from application.registry import registry
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, Removed
from application.toolsets.tasks import TaskFilters, TaskOut, _task_page
from domain.clients import Client
from domain.errors import NotFound
from domain.values import MAX_MINOR_UNITS
from domain.projects import Project
from projections import projects as projects_q

ProjectId = Annotated[UUID, Meta(description="The project id (from crm_projects_list or crm_projects_create).")]
Name = Annotated[str, Meta(min_length=1, max_length=200, description="Project name, e.g. 'Website Studio Bianchi'.")]
Status = Literal["planned", "active", "on_hold", "completed", "cancelled"]
Role = Annotated[Literal["manager", "member", "viewer"], Meta(description="manager, member or viewer.")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. 'EUR'.")]
Budget = Annotated[int, Meta(ge=0, le=MAX_MINOR_UNITS, description="Budget in cents, e.g. 150000 for 1,500.00.")]
BriefText = Annotated[str, Meta(max_length=20000, description="Markdown text.")]
BriefList = Annotated[list[Annotated[str, Meta(min_length=1, max_length=1000)]], Meta(max_length=100)]


class Member(Struct, kw_only=True):
    user_id: UUID
    role: str
    name: str | None
    email: str | None
    added_at: datetime


class ProjectSummary(Struct, kw_only=True):
    id: UUID
    name: str
    description: str | None
    client_id: UUID | None
    deal_id: UUID | None
    status: str
    archived: bool
    archived_at: datetime | None
    start_date: date | None
    end_date: date | None
    budget_cents: int | None
    currency: str | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class Brief(Struct, kw_only=True, omit_defaults=True):
    goals: list[str] | None = None
    scope: str | None = None
    deliverables: list[str] | None = None
    constraints: list[str] | None = None


class BriefOut(Struct, kw_only=True):
    project_id: UUID
    brief: Brief
    brief_updated_at: datetime | None


class ProjectDetail(ProjectSummary, kw_only=True):
    members: list[Member]
    tasks_count: int
    open_tasks_count: int
    overdue_tasks_count: int
    activities_count: int
    logged_minutes: int
    brief_summary: Annotated[str | None, Meta(description="One line per brief section; the full text is in crm_projects_get_brief.")]


class ActivityOut(Struct, kw_only=True):
    id: UUID
    project_id: UUID
    kind: Literal["worklog", "milestone", "comment", "system"]
    text: str
    minutes: int | None
    occurred_on: date | None
    author_id: UUID | None
    created_at: datetime


class MemberList(Struct):
    items: list[Member]


def _summary(brief: dict[str, Any]) -> str | None:
    parts = []
    for section in ("goals", "scope", "deliverables", "constraints"):
        value = brief.get(section)
        if value:
            text = "; ".join(value) if isinstance(value, list) else str(value)
            parts.append(f"{section}: {text[:160] + ('…' if len(text) > 160 else '')}")
    return "\n".join(parts) or None


def present_project(ctx: QueryContext, project_id: UUID) -> ProjectDetail:
    row = projects_q.get_project(ctx.conn, ctx.org_id, project_id, today=org_today(ctx.conn, ctx.org_id))
    row["brief_summary"] = _summary(row.pop("brief") or {})
    return msgspec.convert(row, ProjectDetail)


def present_brief(ctx: QueryContext, project_id: UUID) -> BriefOut:
    return msgspec.convert(projects_q.get_brief(ctx.conn, ctx.org_id, project_id), BriefOut)


def _require(ctx: QueryContext, project_id: UUID) -> None:
    if not projects_q.project_exists(ctx.conn, ctx.org_id, project_id):
        raise NotFound("project", project_id, field="project_id")


# -- queries ---------------------------------------------------------------------------------------------
class ListProjects(ListQuery, kw_only=True):
    """List projects, newest first by default. Archived projects are left out unless archived=true (then only
    archived ones are listed). Filter by status, client and member (a user id)."""

    status: Status | None = None
    client_id: Annotated[UUID | None, Meta(description="Only projects for this client.")] = None
    member_id: Annotated[UUID | None, Meta(description="Only projects this user is a member of.")] = None
    archived: Annotated[bool, Meta(description="true: list archived projects instead of those in use.")] = False
    sort: Literal["created_desc", "name_asc", "end_asc"] = "created_desc"


@registry.query("crm_projects_list", output=Page[ProjectSummary])
def list_projects(q: ListProjects, ctx: QueryContext) -> Page[ProjectSummary]:
    rows, cursor = projects_q.list_projects(ctx.conn, ctx.org_id, status=q.status, client_id=q.client_id,
                                            member_id=q.member_id, archived=q.archived, sort=q.sort, limit=q.limit,
                                            cursor=q.cursor)
    return Page(items=[msgspec.convert(r, ProjectSummary) for r in rows], next_cursor=cursor)


class GetProject(Query, kw_only=True):
    """One project with its members and roles, task counters (open, overdue), logged time and a brief summary."""

    project_id: ProjectId


@registry.query("crm_projects_get", output=ProjectDetail)
def get_project(q: GetProject, ctx: QueryContext) -> ProjectDetail:
    return present_project(ctx, q.project_id)


class GetBrief(Query, kw_only=True):
    """The project's brief: goals, scope, deliverables and constraints."""

    project_id: ProjectId


@registry.query("crm_projects_get_brief", output=BriefOut)
def get_brief(q: GetBrief, ctx: QueryContext) -> BriefOut:
    return present_brief(ctx, q.project_id)


class ListActivities(ListQuery, kw_only=True):
    """The project's activity log, newest first: worklogs, milestones, comments, and system entries (created,
    archived, members, brief changes)."""

    project_id: ProjectId
    kind: Literal["worklog", "milestone", "comment", "system"] | None = None


@registry.query("crm_projects_list_activities", output=Page[ActivityOut])
def list_activities(q: ListActivities, ctx: QueryContext) -> Page[ActivityOut]:
    _require(ctx, q.project_id)
    rows, cursor = projects_q.list_activities(ctx.conn, ctx.org_id, q.project_id, kind=q.kind, limit=q.limit,
                                              cursor=q.cursor)
    return Page(items=[msgspec.convert(r, ActivityOut) for r in rows], next_cursor=cursor)


class ListProjectTasks(TaskFilters, kw_only=True):
    """Tasks of a project, soonest due first by default; the same filters as crm_tasks_list."""

    project_id: ProjectId


@registry.query("crm_projects_list_tasks", output=Page[TaskOut], reads=("tasks",))
def list_project_tasks(q: ListProjectTasks, ctx: QueryContext) -> Page[TaskOut]:
    _require(ctx, q.project_id)
    return _task_page(ctx, q, q.project_id)


class ListAssignments(Query, kw_only=True):
    """Members of a project with their roles (manager, member, viewer)."""

    project_id: ProjectId


@registry.query("crm_projects_list_assignments", output=MemberList)
def list_assignments(q: ListAssignments, ctx: QueryContext) -> MemberList:
    _require(ctx, q.project_id)
    return MemberList(items=[msgspec.convert(r, Member) for r in projects_q.list_members(ctx.conn, ctx.org_id, q.project_id)])


# -- commands --------------------------------------------------------------------------------------------
FIELDS = ("name", "description", "client_id", "deal_id", "status", "start_date", "end_date", "budget_cents", "currency")


def _changes(cmd: Any) -> dict[str, Any]:
    return {k: getattr(cmd, k) for k in FIELDS if getattr(cmd, k, UNSET) is not UNSET}


LINK_READS = ("clients", "deals")  # what _check_links reads


def _check_links(uow: UnitOfWork, client_id: UUID | None, deal_id: UUID | None) -> None:
    if client_id is not None:
        uow.get(Client, client_id, field="client_id")
    if deal_id is not None:
        row = uow.conn.execute("SELECT 1 FROM deals WHERE organization_id = %s AND id = %s", (uow.org_id, deal_id)).fetchone()
        if row is None:
            raise NotFound("deal", deal_id, field="deal_id")


class CreateProject(Command, kw_only=True):
    """Create a project, e.g. for a won deal: name, client, dates, budget. Add people with
    crm_projects_assign_user, write the brief with crm_projects_update_brief, add tasks with
    crm_tasks_create(project_id=...)."""

    name: Name
    description: Annotated[str, Meta(max_length=20000)] | None = None
    client_id: Annotated[UUID | None, Meta(description="The client the project is for.")] = None
    deal_id: Annotated[UUID | None, Meta(description="The deal the project comes from.")] = None
    status: Status = "active"
    start_date: Annotated[date | None, Meta(description="YYYY-MM-DD.")] = None
    end_date: Annotated[date | None, Meta(description="YYYY-MM-DD, not before start_date.")] = None
    budget_cents: Budget | None = None
    currency: Currency | None = None


@registry.command("crm_projects_create", output=ProjectDetail, returns=UUID, present=present_project, reads=LINK_READS)
def create_project(cmd: CreateProject, uow: UnitOfWork) -> UUID:
    _check_links(uow, cmd.client_id, cmd.deal_id)
    project = Project.create(uow.org_id, _changes(cmd), uow.principal.user_id)
    if uow.principal.user_id is not None:
        project.assign_user(uow.principal.user_id, "manager")
    uow.add(project)
    return project.id


def project_command(name: str, input: type[Struct], act: Any, *, destructive: bool = False, output: type = ProjectDetail,
                    present: Any = present_project, returns: type = UUID, reads: tuple[str, ...] = ()) -> None:
    entity_command(name, input, Project, "project_id", act, output=output, present=present, returns=returns,
                   destructive=destructive, reads=reads)


class UpdateProject(Command, kw_only=True):
    """Change a project's name, description, links, status, dates or budget. Only the fields you send change;
    send null to clear an optional one."""

    project_id: ProjectId
    name: Name | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=20000)] | None | UnsetType = UNSET
    client_id: UUID | None | UnsetType = UNSET
    deal_id: UUID | None | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    start_date: date | None | UnsetType = UNSET
    end_date: date | None | UnsetType = UNSET
    budget_cents: Budget | None | UnsetType = UNSET
    currency: Currency | None | UnsetType = UNSET


def _update(project: Project, cmd: UpdateProject, uow: UnitOfWork) -> None:
    changes = _changes(cmd)
    _check_links(uow, changes.get("client_id") if changes.get("client_id") != project.client_id else None,
                 changes.get("deal_id") if changes.get("deal_id") != project.deal_id else None)
    project.update(changes)


project_command("crm_projects_update", UpdateProject, _update, reads=LINK_READS)


class DeleteProject(Command, kw_only=True):
    """Delete a project. It disappears from lists and reads; its tasks stay (unlinked in lists by project) and its
    history stays in the audit trail. Prefer crm_projects_archive to keep it for reference."""

    project_id: ProjectId


def _delete(project: Project, cmd: DeleteProject, uow: UnitOfWork) -> Removed:
    project.delete()
    return Removed(id=project.id, entity="project")


project_command("crm_projects_delete", DeleteProject, _delete, destructive=True, output=Removed, present=None,
                returns=Removed)


class UpdateBrief(Command, kw_only=True):
    """Write or change the project's brief. Only the sections you send change: goals (list), scope (text),
    deliverables (list), constraints (list, e.g. budget, deadlines, technology)."""

    project_id: ProjectId
    goals: BriefList | UnsetType = UNSET
    scope: BriefText | UnsetType = UNSET
    deliverables: BriefList | UnsetType = UNSET
    constraints: BriefList | UnsetType = UNSET


def _brief(project: Project, cmd: UpdateBrief, uow: UnitOfWork) -> None:
    project.update_brief({k: getattr(cmd, k) for k in ("goals", "scope", "deliverables", "constraints")
                          if getattr(cmd, k) is not UNSET})


project_command("crm_projects_update_brief", UpdateBrief, _brief, output=BriefOut, present=present_brief)


class AddActivity(Command, kw_only=True):
    """Log an activity on a project: a worklog (with minutes spent), a milestone reached, or a comment."""

    project_id: ProjectId
    kind: Literal["worklog", "milestone", "comment"]
    text: Annotated[str, Meta(min_length=1, max_length=5000, description="What happened.")]
    minutes: Annotated[int, Meta(ge=1, le=24 * 60, description="Time spent, for worklogs.")] | None = None
    occurred_on: Annotated[date | None, Meta(description="The day it happened (YYYY-MM-DD); default today.")] = None


def present_activity(ctx: QueryContext, activity_id: UUID) -> ActivityOut:
    row = ctx.conn.execute(
        "SELECT id, project_id, kind, text, minutes, occurred_on, author_id, created_at FROM project_activities"
        " WHERE organization_id = %s AND id = %s", (ctx.org_id, activity_id)).fetchone()
    if row is None:
        raise NotFound("activity", activity_id, field="activity_id")
    return msgspec.convert(row, ActivityOut)


project_command("crm_projects_add_activity", AddActivity,
                lambda p, cmd, uow: p.log_activity(cmd.kind, cmd.text, minutes=cmd.minutes,
                                                   occurred_on=cmd.occurred_on or org_today(uow.conn, uow.org_id),
                                                   author_id=uow.principal.user_id),
                output=ActivityOut, present=present_activity)


class ArchiveProject(Command, kw_only=True):
    """Archive a project: it drops out of default lists and accepts no new tasks; bring it back with
    crm_projects_unarchive."""

    project_id: ProjectId


project_command("crm_projects_archive", ArchiveProject, lambda p, cmd, uow: p.archive(), destructive=True)


class UnarchiveProject(Command, kw_only=True):
    """Bring an archived project back into use."""

    project_id: ProjectId


project_command("crm_projects_unarchive", UnarchiveProject, lambda p, cmd, uow: p.unarchive())


class AssignUser(Command, kw_only=True):
    """Add a user to a project with a role (or change their role). Find user ids with crm_users_list."""

    project_id: ProjectId
    user_id: Annotated[UUID, Meta(description="A user id of this organization.")]
    role: Role = "member"


def _assign(project: Project, cmd: AssignUser, uow: UnitOfWork) -> None:
    ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
    project.assign_user(cmd.user_id, cmd.role)


project_command("crm_projects_assign_user", AssignUser, _assign)


class UnassignUser(Command, kw_only=True):
    """Remove a user from a project."""

    project_id: ProjectId
    user_id: Annotated[UUID, Meta(description="A member's user id (crm_projects_list_assignments).")]


project_command("crm_projects_unassign_user", UnassignUser, lambda p, cmd, uow: p.unassign_user(cmd.user_id),
                destructive=True)
