"""Projects: the `crm_projects_*` tools (members, brief, activity log, archive, tasks)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application.identity import ensure_user
from application.links import changed_links, check_links, link_reads
from application.organization import org_today
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, sent
from application import custom_fields
from application.toolset import Toolset
from application.toolsets.tasks import TaskFilters, TaskRow, _task_page
from domain.values import MAX_MINOR_UNITS
from domain.projects import BRIEF_SECTIONS, LOG_KINDS, MEMBER_ROLES, PROJECT_FIELDS, STATUSES, Project
from projections import projects as projects_q

ProjectId = Annotated[UUID, Meta(description="From crm_projects_list.")]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Status = Literal[STATUSES]  # type: ignore[valid-type]
Role = Literal[MEMBER_ROLES]  # type: ignore[valid-type]
LogKind = Literal[LOG_KINDS]  # type: ignore[valid-type]
ShownLogKind = Literal[(*LOG_KINDS, "system")]  # type: ignore[valid-type]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. 'EUR'.")]
Budget = Annotated[int, Meta(ge=0, le=MAX_MINOR_UNITS, description="In cents: 150000 = 1,500.00.")]
BriefText = Annotated[str, Meta(max_length=20000)]
BriefList = Annotated[list[Annotated[str, Meta(min_length=1, max_length=1000)]], Meta(max_length=100)]


class Member(Struct, kw_only=True, omit_defaults=True):
    user_id: UUID
    role: str
    name: str | None = None
    email: str | None = None
    added_at: datetime


class ProjectSummary(custom_fields.CustomFieldsShown, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    description: str | None = None
    client_id: UUID | None = None
    deal_id: UUID | None = None
    status: str
    archived: bool
    archived_at: datetime | None = None
    start_date: date | None = None
    end_date: date | None = None
    budget_cents: int | None = None
    currency: str | None = None
    created_by: UUID | None = None
    created_at: datetime
    updated_at: datetime


class Brief(Struct, kw_only=True, omit_defaults=True):
    goals: list[str] | None = None
    scope: str | None = None
    deliverables: list[str] | None = None
    constraints: list[str] | None = None


class BriefOut(Struct, kw_only=True, omit_defaults=True):
    project_id: UUID
    brief: Brief
    brief_updated_at: datetime | None = None


class ProjectDetail(ProjectSummary, kw_only=True, omit_defaults=True):
    members: list[Member]
    tasks_count: int
    open_tasks_count: int
    overdue_tasks_count: int
    activities_count: int
    logged_minutes: int
    brief_summary: Annotated[str | None, Meta(description="One line per brief section; the full text is in crm_projects_get_brief.")]


class LogEntryOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    project_id: UUID
    kind: ShownLogKind
    text: str
    minutes: int | None = None
    occurred_on: date | None = None
    author_id: UUID | None = None
    created_at: datetime


class MemberList(Struct, kw_only=True, omit_defaults=True):
    items: list[Member]


def _summary(brief: dict[str, Any]) -> str | None:
    parts = []
    for section in BRIEF_SECTIONS:
        value = brief.get(section)
        if value:
            text = "; ".join(value) if isinstance(value, list) else str(value)
            parts.append(f"{section}: {text[:160] + ('…' if len(text) > 160 else '')}")
    return "\n".join(parts) or None


def present_project(ctx: QueryContext, project_id: UUID) -> ProjectDetail:
    row = projects_q.get_project(ctx.conn, ctx.org_id, project_id, today=org_today(ctx.conn, ctx.org_id))
    row["brief_summary"] = _summary(row.pop("brief") or {})
    return msgspec.convert(row, ProjectDetail)


def present_project_row(ctx: QueryContext, project_id: UUID) -> ProjectSummary:
    return msgspec.convert(projects_q.get_project(ctx.conn, ctx.org_id, project_id, today=org_today(ctx.conn, ctx.org_id)),
                           ProjectSummary)


def present_members(ctx: QueryContext, project_id: UUID) -> MemberList:
    return MemberList(items=[msgspec.convert(r, Member) for r in projects_q.list_members(ctx.conn, ctx.org_id, project_id)])


def present_brief(ctx: QueryContext, project_id: UUID) -> BriefOut:
    return msgspec.convert(projects_q.get_brief(ctx.conn, ctx.org_id, project_id), BriefOut)


projects = Toolset(
    "projects", title="Projects", description="Projects, brief, members, activity log, archive",
    aggregate=Project, id_field="project_id", id_type=ProjectId, output=ProjectDetail, present=present_project,
    row=ProjectSummary, present_row=present_project_row,
    exists=projects_q.project_exists, subject="a project",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListProjects(custom_fields.FiltersCustomFields, kw_only=True):
    """List projects, newest first by default, by status, client and member (user id); archived ones only with
    archived=true."""

    status: Status | None = None
    client_id: UUID | None = None
    member_id: UUID | None = None
    archived: bool = False
    sort: Literal["created_desc", "name_asc", "end_asc"] = "created_desc"


@projects.query("list", output=Page[ProjectSummary])
def list_projects(q: ListProjects, ctx: QueryContext) -> Page[ProjectSummary]:
    rows, cursor = projects_q.list_projects(ctx.conn, ctx.org_id, status=q.status, client_id=q.client_id,
                                            member_id=q.member_id, archived=q.archived, sort=q.sort, limit=q.limit,
                                            custom=custom_fields.list_filter(
                                                ctx.conn, ctx.org_id, "project", q.custom_fields),
                                            cursor=q.cursor)
    return Page(items=[msgspec.convert(r, ProjectSummary) for r in rows], next_cursor=cursor)


class GetProject(Query, kw_only=True):
    """One project with its members and roles, task counters (open, overdue), logged time and a brief summary."""

    project_id: ProjectId


@projects.query("get", output=ProjectDetail)
def get_project(q: GetProject, ctx: QueryContext) -> ProjectDetail:
    return present_project(ctx, q.project_id)


class GetBrief(Query, kw_only=True):
    """The project's brief: goals, scope, deliverables and constraints."""

    project_id: ProjectId


@projects.query("get_brief", output=BriefOut)
def get_brief(q: GetBrief, ctx: QueryContext) -> BriefOut:
    return present_brief(ctx, q.project_id)


class ListLogEntries(ListQuery, kw_only=True):
    """The project's activity log, newest first: worklogs, milestones, comments, and system entries."""

    project_id: ProjectId
    kind: ShownLogKind | None = None


@projects.query("list_activities", output=Page[LogEntryOut])
def list_log_entries(q: ListLogEntries, ctx: QueryContext) -> Page[LogEntryOut]:
    projects.require(ctx, q.project_id)
    rows, cursor = projects_q.list_log_entries(ctx.conn, ctx.org_id, q.project_id, kind=q.kind, limit=q.limit,
                                              cursor=q.cursor)
    return Page(items=[msgspec.convert(r, LogEntryOut) for r in rows], next_cursor=cursor)


class ListProjectTasks(TaskFilters, kw_only=True):
    """Tasks of a project, soonest due first by default; the same filters as crm_tasks_list."""

    project_id: ProjectId


@projects.query("list_tasks", output=Page[TaskRow], reads=("tasks",))
def list_project_tasks(q: ListProjectTasks, ctx: QueryContext) -> Page[TaskRow]:
    projects.require(ctx, q.project_id)
    return _task_page(ctx, q, q.project_id)


class ListAssignments(Query, kw_only=True):
    """Members of a project with their roles (manager, member, viewer)."""

    project_id: ProjectId


@projects.query("list_assignments", output=MemberList)
def list_assignments(q: ListAssignments, ctx: QueryContext) -> MemberList:
    projects.require(ctx, q.project_id)
    return present_members(ctx, q.project_id)


# -- commands --------------------------------------------------------------------------------------------
LINK_READS = link_reads("client_id", "deal_id")


class CreateProject(custom_fields.WithCustomFields, kw_only=True):
    """Create a project, e.g. for a won deal; then crm_projects_assign_user, _update_brief,
    crm_tasks_create(project_id)."""

    name: Name
    description: Annotated[str, Meta(max_length=20000)] | None = None
    client_id: UUID | None = None
    deal_id: UUID | None = None
    status: Status = "active"
    start_date: date | None = None
    end_date: Annotated[date | None, Meta(description="Not before start_date.")] = None
    budget_cents: Budget | None = None
    currency: Currency | None = None


@projects.command("create", output=ProjectSummary, returns=UUID, present=present_project_row, reads=LINK_READS)
def create_project(cmd: CreateProject, uow: UnitOfWork) -> UUID:
    check_links(uow, {"client_id": cmd.client_id, "deal_id": cmd.deal_id})
    project = Project.create(uow.org_id, sent(cmd, PROJECT_FIELDS), uow.principal.user_id)
    if uow.principal.user_id is not None:
        project.assign_user(uow.principal.user_id, "manager")
    custom_fields.record(uow, project, "project", cmd.custom_fields, creating=True)
    uow.add(project)
    return project.id


class UpdateProject(custom_fields.ChangesCustomFields, kw_only=True):
    """Change a project's name, description, links, status, dates or budget."""

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
    changes = sent(cmd, PROJECT_FIELDS)
    check_links(uow, changed_links(project, changes))
    custom_fields.record(uow, project, "project", cmd.custom_fields, creating=False)
    project.update(changes)


projects.act("update", UpdateProject, _update, row=True, reads=LINK_READS)


class DeleteProject(Command, kw_only=True):
    """Delete a project (its tasks stay); crm_projects_archive keeps it for reference."""

    project_id: ProjectId


projects.delete(DeleteProject)


class UpdateBrief(Command, kw_only=True):
    """Write or change the project's brief, by section: goals (list), scope (text), deliverables (list), constraints
    (list, e.g. budget, deadlines)."""

    project_id: ProjectId
    goals: BriefList | UnsetType = UNSET
    scope: BriefText | UnsetType = UNSET
    deliverables: BriefList | UnsetType = UNSET
    constraints: BriefList | UnsetType = UNSET


def _brief(project: Project, cmd: UpdateBrief, uow: UnitOfWork) -> None:
    project.update_brief(sent(cmd, BRIEF_SECTIONS))


projects.act("update_brief", UpdateBrief, _brief, output=BriefOut, present=present_brief)


class AddLogEntry(Command, kw_only=True):
    """Log an activity on a project: a worklog (with minutes spent), a milestone reached, or a comment."""

    project_id: ProjectId
    kind: LogKind
    text: Annotated[str, Meta(min_length=1, max_length=5000)]
    minutes: Annotated[int, Meta(ge=1, le=24 * 60)] | None = None
    occurred_on: Annotated[date | None, Meta(description="Default today.")] = None


def present_log_entry(ctx: QueryContext, entry_id: UUID) -> LogEntryOut:
    return msgspec.convert(projects_q.get_log_entry(ctx.conn, ctx.org_id, entry_id), LogEntryOut)


projects.act("add_activity", AddLogEntry,
                lambda p, cmd, uow: p.log_activity(cmd.kind, cmd.text, minutes=cmd.minutes,
                                                   occurred_on=cmd.occurred_on or org_today(uow.conn, uow.org_id),
                                                   author_id=uow.principal.user_id),
                output=LogEntryOut, present=present_log_entry)


class ArchiveProject(Command, kw_only=True):
    """Archive a project: it leaves default lists and takes no new tasks (crm_projects_unarchive brings it back)."""

    project_id: ProjectId


projects.act("archive", ArchiveProject, lambda p, cmd, uow: p.archive(), destructive=True, row=True)


class UnarchiveProject(Command, kw_only=True):
    """Bring an archived project back into use."""

    project_id: ProjectId


projects.act("unarchive", UnarchiveProject, lambda p, cmd, uow: p.unarchive(), row=True)


class AssignUser(Command, kw_only=True):
    """Add a user (crm_users_list) to a project with a role, or change their role."""

    project_id: ProjectId
    user_id: Annotated[UUID, Meta(description="From crm_users_list.")]
    role: Role = "member"


def _assign(project: Project, cmd: AssignUser, uow: UnitOfWork) -> None:
    ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
    project.assign_user(cmd.user_id, cmd.role)


projects.act("assign_user", AssignUser, _assign, presents_entity=True, output=MemberList, present=present_members)


class UnassignUser(Command, kw_only=True):
    """Remove a user from a project."""

    project_id: ProjectId
    user_id: Annotated[UUID, Meta(description="A member's user id (crm_projects_list_assignments).")]


projects.act("unassign_user", UnassignUser, lambda p, cmd, uow: p.unassign_user(cmd.user_id),
             presents_entity=True, output=MemberList, present=present_members,
                destructive=True)
