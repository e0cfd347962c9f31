"""Tasks: the `crm_tasks_*` tools."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
from msgspec import Meta, Struct

from application.identity import ensure_user
from application.registry import registry
from application.service import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, Tag
from domain.clients import Client
from domain.errors import NotFound
from domain.tasks import Task
from projections import tasks as tasks_q

Priority = Literal["low", "normal", "high", "urgent"]
TaskId = Annotated[UUID, Meta(description="The task id (from crm_tasks_list or crm_tasks_create).")]


class TaskOut(Struct, kw_only=True):
    id: UUID
    title: str
    description: str | None
    status: Literal["open", "done"]
    priority: Priority
    due_date: date | None
    client_id: UUID | None
    deal_id: UUID | None
    project_id: UUID | None
    assignee_id: UUID | None
    tags: list[str]
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


def present_task(ctx: QueryContext, task_id: UUID) -> TaskOut:
    return msgspec.convert(tasks_q.get_task(ctx.conn, ctx.org_id, task_id), TaskOut)


def organization_today(conn, org_id: UUID) -> date:
    """'Today' in the organization's timezone: what 'due today' and 'overdue' mean to its users."""
    tz = conn.execute("SELECT timezone FROM organizations WHERE id = %s", (org_id,)).fetchone()["timezone"]
    return datetime.now(ZoneInfo(tz)).date()


class CreateTask(Command, kw_only=True):
    """Create a task, e.g. a follow-up call. Link it to a lead/client (client_id), a deal or a project, give a
    due_date (YYYY-MM-DD, in the organization's timezone) and an assignee (user id from crm_users_list)."""

    title: Annotated[str, Meta(min_length=1, max_length=300, description="What to do, e.g. 'Call Mario Rossi'.")]
    description: Annotated[str, Meta(max_length=20000)] | None = None
    due_date: Annotated[date | None, Meta(description="Due date, YYYY-MM-DD.")] = None
    priority: Priority = "normal"
    client_id: Annotated[UUID | None, Meta(description="Lead/client the task is for.")] = None
    deal_id: Annotated[UUID | None, Meta(description="Deal the task is for.")] = None
    project_id: Annotated[UUID | None, Meta(description="Project the task belongs to.")] = None
    assignee_id: Annotated[UUID | None, Meta(description="User who should do it; defaults to nobody.")] = None
    tags: Annotated[list[Tag], Meta(max_length=20)] = []


def _ensure_row(uow: UnitOfWork, table: str, entity: str, entity_id: UUID, field: str) -> None:
    row = uow.conn.execute(f"SELECT 1 FROM {table} WHERE organization_id = %s AND id = %s",  # noqa: S608 - constant
                           (uow.org_id, entity_id)).fetchone()
    if row is None:
        raise NotFound(entity, entity_id, field=field)


@registry.command("crm_tasks_create", output=TaskOut, returns=UUID, present=present_task)
def create_task(cmd: CreateTask, uow: UnitOfWork) -> UUID:
    if cmd.client_id is not None:
        uow.get(Client, cmd.client_id, field="client_id")
    if cmd.deal_id is not None:
        _ensure_row(uow, "deals", "deal", cmd.deal_id, "deal_id")
    if cmd.project_id is not None:
        _ensure_row(uow, "projects", "project", cmd.project_id, "project_id")
    if cmd.assignee_id is not None:
        ensure_user(uow.conn, uow.org_id, cmd.assignee_id, field="assignee_id")
    fields = msgspec.to_builtins(
        {k: getattr(cmd, k) for k in ("title", "description", "priority", "client_id", "deal_id", "project_id")}
    )
    fields["due_date"] = cmd.due_date
    task = Task(org_id=uow.org_id, fields=fields, assignee_id=cmd.assignee_id, created_by=uow.principal.user_id)
    for tag in cmd.tags:
        task.add_tag(tag)
    uow.add(task)
    return task.id


class GetTask(Query, kw_only=True):
    """One task with its links, assignee, due date, priority and tags."""

    task_id: TaskId


@registry.query("crm_tasks_get", output=TaskOut)
def get_task(q: GetTask, ctx: QueryContext) -> TaskOut:
    return present_task(ctx, q.task_id)


class ListTasks(ListQuery, kw_only=True):
    """List tasks, soonest due first by default. Filter by assignee, client, deal, project, status, tag and due
    date: due='overdue' (open and past due) or 'today' use the organization's timezone."""

    assignee_id: UUID | None = None
    client_id: UUID | None = None
    deal_id: UUID | None = None
    project_id: UUID | None = None
    status: Literal["open", "done"] | None = None
    tag: Tag | None = None
    due: Annotated[Literal["overdue", "today", "none"] | None, Meta(description="overdue, today, or none (no due date).")] = None
    due_from: Annotated[date | None, Meta(description="Due on or after (YYYY-MM-DD).")] = None
    due_to: Annotated[date | None, Meta(description="Due on or before (YYYY-MM-DD).")] = None
    sort: Literal["due_asc", "due_desc", "created_desc", "created_asc"] = "due_asc"


@registry.query("crm_tasks_list", output=Page[TaskOut])
def list_tasks(q: ListTasks, ctx: QueryContext) -> Page[TaskOut]:
    rows, cursor = tasks_q.list_tasks(
        ctx.conn, ctx.org_id, today=organization_today(ctx.conn, ctx.org_id), assignee_id=q.assignee_id,
        client_id=q.client_id, deal_id=q.deal_id, project_id=q.project_id, status=q.status, tag=q.tag, due=q.due,
        due_from=q.due_from, due_to=q.due_to, sort=q.sort, limit=q.limit, cursor=q.cursor,
    )
    return Page(items=[msgspec.convert(r, TaskOut) for r in rows], next_cursor=cursor)
