"""Tasks: the `crm_tasks_*` tools (status, assignment, links, tags, checklist, attachments, search)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application import attachments as blobs
from application.identity import ensure_user
from application.links import changed_links, check_links, link_reads
from application.organization import org_today
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, Limit, ListQuery, Matches, Page, Query, Removed, SearchText, Tag, sent
from application import custom_fields
from application.toolset import Toolset
from domain.errors import DomainError, NotFound
from domain.tasks import PRIORITIES, STATUSES, TASK_FIELDS, Task, check_content
from projections import tasks as tasks_q

Priority = Literal[PRIORITIES]  # type: ignore[valid-type]
Status = Literal[STATUSES]  # type: ignore[valid-type]
TaskId = Annotated[UUID, Meta(description="From crm_tasks_list or _search.")]
ItemId = Annotated[UUID, Meta(description="From crm_tasks_get.")]
AttachmentId = Annotated[UUID, Meta(description="From crm_tasks_list_attachments.")]
Title = Annotated[str, Meta(min_length=1, max_length=300)]
Description = Annotated[str, Meta(max_length=20000)]
ItemText = Annotated[str, Meta(min_length=1, max_length=500)]
DueDate = date  # a day in the organization's timezone (the server instructions say how dates are read)


class TaskRow(custom_fields.CustomFieldsShown, kw_only=True, omit_defaults=True):
    """A task in brief, as lists show it (crm_tasks_get has everything: the assignee id, exact times)."""

    id: UUID
    title: str
    status: Status
    priority: Priority
    due_date: date | None = None
    client_id: UUID | None = None
    client_name: str | None = None
    deal_id: UUID | None = None
    project_id: UUID | None = None
    assignee_name: str | None = None
    tags: list[str] = []
    checklist_total: int = 0
    checklist_done: int = 0
    created_on: date


class TaskOut(TaskRow, kw_only=True, omit_defaults=True):
    assignee_id: UUID | None = None
    created_at: datetime
    description: str | None = None
    deal_title: str | None = None
    project_name: str | None = None
    created_by: UUID | None = None
    updated_at: datetime
    completed_at: datetime | None = None
    attachments_count: int = 0


class ChecklistItemOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    task_id: UUID
    position: int
    text: str
    done: bool
    done_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class AttachmentOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    task_id: UUID
    name: str
    url: Annotated[str | None, Meta(description="The external reference, for URL attachments.")]
    size_bytes: int | None = None
    mime_type: str | None = None
    sha256: str | None = None
    created_by: UUID | None = None
    created_at: datetime
    download_url: Annotated[str | None, Meta(description="For stored content: a signed link, valid until download_expires_at.")] = None
    download_expires_at: datetime | None = None


class TaskDetail(TaskOut, kw_only=True, omit_defaults=True):
    checklist: list[ChecklistItemOut]
    attachments: list[AttachmentOut]


class TaskHit(TaskRow, kw_only=True, omit_defaults=True):
    score: float


class TaskSearchResult(Matches, kw_only=True, omit_defaults=True):
    items: list[TaskHit]


class ChecklistOut(Struct, kw_only=True, omit_defaults=True):
    items: list[ChecklistItemOut]


class AttachmentList(Struct, kw_only=True, omit_defaults=True):
    items: list[AttachmentOut]


class TagCount(Struct, kw_only=True, omit_defaults=True):
    tag: str
    count: int


class TagCounts(Struct, kw_only=True, omit_defaults=True):
    items: list[TagCount]


def _attachment(ctx: QueryContext, row: dict[str, Any], secret: bytes | None) -> AttachmentOut:
    out = msgspec.convert(row, AttachmentOut)
    if row.get("sha256") and secret is not None:
        url, expires = blobs.download_link(secret, row["id"])
        out.download_url = url
        out.download_expires_at = datetime.fromtimestamp(expires, UTC)
    return out


def _attachments(ctx: QueryContext, rows: list[dict[str, Any]]) -> list[AttachmentOut]:
    secret = blobs.link_secret(ctx.conn) if any(r.get("sha256") for r in rows) else None
    return [_attachment(ctx, r, secret) for r in rows]


def present_task(ctx: QueryContext, task_id: UUID) -> TaskDetail:
    row = tasks_q.get_task(ctx.conn, ctx.org_id, task_id)
    row["checklist"] = tasks_q.list_checklist(ctx.conn, ctx.org_id, task_id)
    row["attachments"] = [msgspec.to_builtins(a) for a in _attachments(ctx, tasks_q.list_attachments(ctx.conn, ctx.org_id, task_id))]
    return msgspec.convert(row, TaskDetail)


def present_item(ctx: QueryContext, item_id: UUID) -> ChecklistItemOut:
    return msgspec.convert(tasks_q.get_checklist_item(ctx.conn, ctx.org_id, item_id), ChecklistItemOut)


def present_attachment(ctx: QueryContext, attachment_id: UUID) -> AttachmentOut:
    row = tasks_q.get_attachment(ctx.conn, ctx.org_id, attachment_id)
    if row is None:
        raise NotFound("attachment", attachment_id, field="attachment_id")
    return _attachments(ctx, [row])[0]


LINK_READS = link_reads("client_id", "deal_id", "project_id")


tasks = Toolset(
    "tasks", title="Tasks", description="Tasks with due dates in the organization's timezone, priority, assignee, "
                                       "links to client/deal/project",
    aggregate=Task, id_field="task_id", id_type=TaskId, output=TaskDetail, present=present_task,
    row=TaskRow, present_row=lambda ctx, task_id: msgspec.convert(tasks_q.get_task(ctx.conn, ctx.org_id, task_id), TaskRow),
    exists=tasks_q.task_exists, subject="a task",
)


# -- queries ---------------------------------------------------------------------------------------------
class GetTask(Query, kw_only=True):
    """One task with links, assignee, due date, priority, tags, checklist and attachments (stored files with an expiring
    download link)."""

    task_id: TaskId


@tasks.query("get", output=TaskDetail)
def get_task(q: GetTask, ctx: QueryContext) -> TaskDetail:
    return present_task(ctx, q.task_id)


class TaskFilters(custom_fields.FiltersCustomFields, kw_only=True):
    assignee_id: Annotated[UUID | None, Meta(description="User id (crm_users_list).")] = None
    unassigned: bool = False
    client_id: UUID | None = None
    deal_id: UUID | None = None
    status: Status | None = None
    tag: Tag | None = None
    due: Annotated[Literal["overdue", "today", "due_soon", "none"] | None, Meta(
        description="due_soon: in the next 7 days; none: no due date (days in the organization's timezone).")] = None
    due_from: date | None = None
    due_to: date | None = None
    sort: Literal["due_asc", "due_desc", "created_desc", "created_asc", "priority_desc"] = "due_asc"


class ListTasks(TaskFilters, kw_only=True):
    """List tasks, soonest due first, by assignee, client, deal, project, status, tag and due date. E.g. my overdue
    tasks: assignee_id=<crm_users_me>, due='overdue'."""

    project_id: UUID | None = None


def _task_page(ctx: QueryContext, q: TaskFilters, project_id: UUID | None) -> Page[TaskRow]:
    rows, cursor = tasks_q.list_tasks(
        ctx.conn, ctx.org_id, today=org_today(ctx.conn, ctx.org_id), assignee_id=q.assignee_id,
        unassigned=q.unassigned, client_id=q.client_id, deal_id=q.deal_id, project_id=project_id, status=q.status,
        tag=q.tag, due=q.due, due_from=q.due_from, due_to=q.due_to, sort=q.sort, limit=q.limit, cursor=q.cursor,
        custom=custom_fields.list_filter(ctx.conn, ctx.org_id, "task", q.custom_fields),
    )
    return Page(items=[msgspec.convert(r, TaskRow) for r in rows], next_cursor=cursor)


@tasks.query("list", output=Page[TaskRow])
def list_tasks(q: ListTasks, ctx: QueryContext) -> Page[TaskRow]:
    return _task_page(ctx, q, q.project_id)


class SearchTasks(Query, kw_only=True):
    """Search tasks by words in title and description (accents and case ignored; 'contr' finds 'contract')."""

    q: SearchText
    status: Status | None = None
    limit: Limit = 25


@tasks.query("search", output=TaskSearchResult)
def search_tasks(q: SearchTasks, ctx: QueryContext) -> TaskSearchResult:
    found = tasks_q.search_tasks(ctx.conn, ctx.org_id, q.q, status=q.status, limit=q.limit)
    return TaskSearchResult(items=[msgspec.convert(r, TaskHit) for r in found.rows], match=found.match)


class ListChecklist(Query, kw_only=True):
    """The checklist items of a task, in their order, with done flags."""

    task_id: TaskId


@tasks.query("list_checklist", output=ChecklistOut)
def list_checklist(q: ListChecklist, ctx: QueryContext) -> ChecklistOut:
    tasks_q.get_task(ctx.conn, ctx.org_id, q.task_id)
    return ChecklistOut(items=[msgspec.convert(r, ChecklistItemOut) for r in tasks_q.list_checklist(ctx.conn, ctx.org_id, q.task_id)])


class ListAttachments(Query, kw_only=True):
    """A task's attachments: name, size, MIME type, and the URL or a download link valid 15 minutes (list again for a
    fresh one)."""

    task_id: TaskId


@tasks.query("list_attachments", output=AttachmentList)
def list_attachments(q: ListAttachments, ctx: QueryContext) -> AttachmentList:
    tasks_q.get_task(ctx.conn, ctx.org_id, q.task_id)
    return AttachmentList(items=_attachments(ctx, tasks_q.list_attachments(ctx.conn, ctx.org_id, q.task_id)))


class ListTags(Query, kw_only=True):
    """Tags in use on tasks, most used first, with how many tasks carry each."""

    status: Status | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 100


@tasks.query("list_tags", output=TagCounts)
def list_tags(q: ListTags, ctx: QueryContext) -> TagCounts:
    return TagCounts(items=[TagCount(**r) for r in tasks_q.tag_counts(ctx.conn, ctx.org_id, status=q.status, limit=q.limit)])


# -- creating and changing -------------------------------------------------------------------------------
class CreateTask(custom_fields.WithCustomFields, kw_only=True):
    """Create a task, e.g. a follow-up call, for a client, deal or project, with due_date, assignee (crm_users_list) and
    checklist."""

    title: Title
    description: Description | None = None
    due_date: DueDate | None = None
    priority: Priority = "normal"
    client_id: UUID | None = None
    deal_id: UUID | None = None
    project_id: UUID | None = None
    assignee_id: Annotated[UUID | None, Meta(description="From crm_users_list.")] = None
    tags: Annotated[list[Tag], Meta(max_length=20)] = []
    checklist: Annotated[list[ItemText], Meta(max_length=50)] = []


@tasks.command("create", output=TaskDetail, returns=UUID, present=present_task, reads=LINK_READS)
def create_task(cmd: CreateTask, uow: UnitOfWork) -> UUID:
    check_links(uow, {"client_id": cmd.client_id, "deal_id": cmd.deal_id, "project_id": cmd.project_id})
    if cmd.assignee_id is not None:
        ensure_user(uow.conn, uow.org_id, cmd.assignee_id, field="assignee_id")
    fields = {k: getattr(cmd, k) for k in TASK_FIELDS}
    task = Task(org_id=uow.org_id, fields=fields, assignee_id=cmd.assignee_id, created_by=uow.principal.user_id)
    for tag in cmd.tags:
        task.add_tag(tag)
    for text in cmd.checklist:
        task.add_checklist_item(text)
    custom_fields.record(uow, task, "task", cmd.custom_fields, creating=True)
    uow.add(task)
    return task.id


class UpdateTask(custom_fields.ChangesCustomFields, kw_only=True):
    """Change a task's title, description, due date, priority or links."""

    task_id: TaskId
    title: Title | UnsetType = UNSET
    description: Description | None | UnsetType = UNSET
    due_date: DueDate | None | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    client_id: UUID | None | UnsetType = UNSET
    deal_id: UUID | None | UnsetType = UNSET
    project_id: UUID | None | UnsetType = UNSET


def _update(task: Task, cmd: UpdateTask, uow: UnitOfWork) -> None:
    changes = sent(cmd, TASK_FIELDS)
    check_links(uow, changed_links(task, changes))
    custom_fields.record(uow, task, "task", cmd.custom_fields, creating=False)
    task.update(changes)


tasks.act("update", UpdateTask, _update, row=True, reads=LINK_READS)


class CompleteTask(Command, kw_only=True):
    """Mark a task done (it leaves the open and overdue lists; crm_tasks_reopen undoes it)."""

    task_id: TaskId


tasks.act("complete", CompleteTask, lambda t, cmd, uow: t.complete(), row=True)


class ReopenTask(Command, kw_only=True):
    """Reopen a done task (it becomes open again)."""

    task_id: TaskId


tasks.act("reopen", ReopenTask, lambda t, cmd, uow: t.reopen(), row=True)


tasks.assignment(label="Task", assign_doc="Assign a task to a user (user_id from crm_users_list).",
                 unassign_doc="Leave a task without an assignee.")


class DeleteTask(Command, kw_only=True):
    """Delete a task: it leaves lists; its history stays in the audit trail."""

    task_id: TaskId


def _delete(task: Task, cmd: DeleteTask, uow: UnitOfWork) -> None:
    _release(task, uow, list(task.attachments))
    task.delete()


tasks.delete(DeleteTask, act=_delete)


tasks.tags(label="Task", add_hint=" Tags in use: crm_tasks_list_tags.")


# -- checklist -------------------------------------------------------------------------------------------
class AddChecklistItem(Command, kw_only=True):
    """Add an item at the end of a task's checklist. Returns the item with its id."""

    task_id: TaskId
    text: ItemText
    done: bool = False


tasks.act("add_checklist_item", AddChecklistItem,
             lambda t, cmd, uow: t.add_checklist_item(cmd.text, cmd.done), output=ChecklistItemOut, present=present_item)


class UpdateChecklistItem(Command, kw_only=True):
    """Rename a checklist item (text) and/or tick or untick it (done)."""

    task_id: TaskId
    item_id: ItemId
    text: ItemText | UnsetType = UNSET
    done: bool | UnsetType = UNSET


def _update_item(task: Task, cmd: UpdateChecklistItem, uow: UnitOfWork) -> UUID:
    task.update_checklist_item(cmd.item_id, text=None if cmd.text is UNSET else cmd.text,
                               done=None if cmd.done is UNSET else cmd.done)
    return cmd.item_id


tasks.act("update_checklist_item", UpdateChecklistItem, _update_item, output=ChecklistItemOut,
             present=present_item)


class RemoveChecklistItem(Command, kw_only=True):
    """Remove a checklist item (the others keep their order)."""

    task_id: TaskId
    item_id: ItemId


def _remove_item(task: Task, cmd: RemoveChecklistItem, uow: UnitOfWork) -> Removed:
    task.remove_checklist_item(cmd.item_id)
    return Removed(id=cmd.item_id, entity="checklist item")


tasks.act("remove_checklist_item", RemoveChecklistItem, _remove_item, destructive=True, output=Removed,
             present=None, returns=Removed)


# -- attachments -----------------------------------------------------------------------------------------
class AddAttachment(Command, kw_only=True):
    """Attach a file to a task: a url, or content_base64 (at most 2 MiB) matching mime_type, stored and served by a
    signed link valid 15 minutes."""

    task_id: TaskId
    name: Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[^/\\\x00]+$",
                              description="File name, e.g. 'contract.pdf'.")]
    mime_type: Annotated[str, Meta(max_length=127, pattern=r"^[\w.+-]+/[\w.+-]+$",
                                   description="MIME type, e.g. 'application/pdf'.")]
    url: Annotated[str, Meta(max_length=2000, pattern=r"^https?://\S+$",
                             description="Where the file lives (give this or content_base64).")] | None = None
    content_base64: Annotated[str, Meta(max_length=blobs.MAX_INLINE_BASE64, description=(
        f"The file content, base64, at most {blobs.MAX_INLINE_BYTES} bytes decoded "
        "(give this or url)."))] | None = None
    size_bytes: Annotated[int, Meta(ge=0)] | None = None


def _attach(task: Task, cmd: AddAttachment, uow: UnitOfWork) -> UUID:
    if (cmd.url is None) == (cmd.content_base64 is None):
        raise DomainError("give exactly one of url or content_base64", field="url" if cmd.url else "content_base64")
    if cmd.url is not None:
        return task.add_attachment(cmd.name, url=cmd.url, size_bytes=cmd.size_bytes, mime_type=cmd.mime_type,
                                   added_by=uow.principal.user_id)
    try:
        content = base64.b64decode(cmd.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise DomainError("content_base64 is not valid base64", field="content_base64") from None
    if len(content) > blobs.MAX_INLINE_BYTES:
        raise DomainError(f"content is larger than {blobs.MAX_INLINE_BYTES} bytes; attach a url instead",
                          field="content_base64")
    check_content(content, cmd.mime_type, cmd.size_bytes)
    digest, write = blobs.keep_content(uow.org_id, content)
    uow.side_writes.append(write)
    return task.add_attachment(cmd.name, sha256=digest, size_bytes=len(content), mime_type=cmd.mime_type,
                               added_by=uow.principal.user_id)


tasks.act("add_attachment", AddAttachment, _attach, output=AttachmentOut, present=present_attachment)


class RemoveAttachment(Command, kw_only=True):
    """Remove an attachment from a task."""

    task_id: TaskId
    attachment_id: AttachmentId


def _release(task: Task, uow: UnitOfWork, attachment_ids: list[str]) -> None:
    digests = [d for a in attachment_ids if (d := task.attachments.get(a, {}).get("sha256"))]
    uow.side_writes += blobs.release_content(uow.org_id, digests)


def _detach(task: Task, cmd: RemoveAttachment, uow: UnitOfWork) -> Removed:
    _release(task, uow, [str(cmd.attachment_id)])
    task.remove_attachment(cmd.attachment_id)
    return Removed(id=cmd.attachment_id, entity="attachment")


tasks.act("remove_attachment", RemoveAttachment, _detach, destructive=True, output=Removed,
             present=None, returns=Removed)
