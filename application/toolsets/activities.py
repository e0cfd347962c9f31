"""Activities and the timeline: the `crm_activities_*` tools."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application.identity import ensure_user
from application.toolset import Toolset
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, sent
from domain.activities import ACTIVITY_FIELDS, TYPES, Activity
from domain.clients import Client
from domain.deals import Deal
from domain.errors import DomainError
from projections import activities as activities_q
from projections import timeline as timeline_q
from projections.timeline import CLIENT_KINDS, DEAL_KINDS, TASK_KINDS

ActivityId = Annotated[UUID, Meta(description="From crm_activities_list.")]
ActivityType = Literal[TYPES]  # type: ignore[valid-type]
Subject = Annotated[str, Meta(max_length=300)]
Body = Annotated[str, Meta(max_length=20000)]
When = Annotated[datetime, Meta(description="ISO 8601 with offset; default now.")]
Direction = Literal["inbound", "outbound"]


class ActivityOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    type: ActivityType
    client_id: UUID | None = None
    deal_id: UUID | None = None
    user_id: UUID | None = None
    user_name: str | None = None
    occurred_at: datetime
    subject: str | None = None
    body: str | None = None
    details: dict[str, Any]
    created_by: UUID | None = None
    created_at: datetime
    updated_at: datetime


EntryKind = Literal[("activity", "note", *DEAL_KINDS, *CLIENT_KINDS, *TASK_KINDS)]  # type: ignore[valid-type]


class TimelineEntry(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    kind: EntryKind
    ref_id: UUID
    """The activity, note, deal, client or task the entry is about."""
    activity_type: str | None = None
    client_id: UUID | None = None
    deal_id: UUID | None = None
    task_id: UUID | None = None
    occurred_at: datetime
    user_id: UUID | None = None
    user_name: str | None = None
    """Who did it, and through which API token or OAuth client (assistant) when that is known."""
    token_name: str | None = None
    oauth_client_name: str | None = None
    title: str
    body: str | None = None
    data: dict[str, Any]
    stage_name: str | None = None
    previous_stage_name: str | None = None


class TimelinePage(Struct, kw_only=True, omit_defaults=True):
    items: list[TimelineEntry]
    next_cursor: str | None = None
    omitted: Annotated[list[str], Meta(description=(
        "What the timeline leaves out because this token may not read it, e.g. 'notes on clients (needs "
        "clients:read)'; empty when nothing is left out."))] = []


# Parts of a timeline that are another resource's data, left out (not refused) without read on that resource.
TIMELINE_PARTS = (("clients", "the client's own changes and notes on clients"),
                  ("deals", "deal entries and notes on deals"), ("tasks", "tasks"), ("pipelines", "stage names"))


def present_activity(ctx: QueryContext, activity_id: UUID) -> ActivityOut:
    return msgspec.convert(activities_q.get_activity(ctx.conn, ctx.org_id, activity_id), ActivityOut)


activities = Toolset(
    "activities", title="Activities", description="Calls, meetings, e-mails, notes; merged timeline of a client or deal",
    aggregate=Activity, id_field="activity_id", id_type=ActivityId, output=ActivityOut, present=present_activity,
    subject="an activity",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListActivities(ListQuery, kw_only=True):
    """Logged activities, newest first, by type (call, meeting, email, note), client, deal, user and dates."""

    type: ActivityType | None = None
    client_id: UUID | None = None
    deal_id: UUID | None = None
    user_id: UUID | None = None
    occurred_from: Annotated[datetime | None, Meta(description="At or after (ISO 8601).")] = None
    occurred_to: Annotated[datetime | None, Meta(description="Before (ISO 8601).")] = None


@activities.query("list", output=Page[ActivityOut])
def list_activities(q: ListActivities, ctx: QueryContext) -> Page[ActivityOut]:
    filters = {k: getattr(q, k) for k in ("type", "client_id", "deal_id", "user_id", "occurred_from", "occurred_to")}
    rows, cursor = activities_q.list_activities(ctx.conn, ctx.org_id, filters=filters, limit=q.limit, cursor=q.cursor)
    return Page(items=[msgspec.convert(r, ActivityOut) for r in rows], next_cursor=cursor)


class GetActivity(Query, kw_only=True):
    """One activity with all its details."""

    activity_id: ActivityId


@activities.query("get", output=ActivityOut)
def get_activity(q: GetActivity, ctx: QueryContext) -> ActivityOut:
    return present_activity(ctx, q.activity_id)


class Timeline(ListQuery, kw_only=True):
    """History of a client or deal, newest first: activities, notes, tasks, deal creation, status, stage, value and
    owner changes, deletions, with who did them; what the token may not read is listed in `omitted`."""

    client_id: UUID | None = None
    deal_id: UUID | None = None
    kinds: list[EntryKind] | None = None


@activities.query("timeline", output=TimelinePage)
def timeline(q: Timeline, ctx: QueryContext) -> TimelinePage:
    if q.client_id is None and q.deal_id is None:
        raise DomainError("give client_id or deal_id", field="client_id")
    may = {resource: ctx.principal.can(resource, "read") for resource, _ in TIMELINE_PARTS}
    rows, cursor = timeline_q.timeline(ctx.conn, ctx.org_id, client_id=q.client_id, deal_id=q.deal_id, kinds=q.kinds,
                                       limit=q.limit, cursor=q.cursor, client_notes=may["clients"],
                                       deal_entries=may["deals"], client_entries=may["clients"],
                                       task_entries=may["tasks"])
    items = [msgspec.convert(r, TimelineEntry) for r in rows]
    if not may["pipelines"]:
        for item in items:
            item.stage_name = item.previous_stage_name = None
    return TimelinePage(items=items, next_cursor=cursor,
                        omitted=[f"{part} (needs {resource}:read)" for resource, part in TIMELINE_PARTS if not may[resource]])


# -- logging ---------------------------------------------------------------------------------------------
class LogBase(Command, kw_only=True):
    client_id: UUID | None = None  # and/or deal_id: the tools' descriptions say so
    deal_id: UUID | None = None
    user_id: Annotated[UUID | None, Meta(description="Who did it; default you.")] = None
    occurred_at: When | None = None
    subject: Subject | None = None
    body: Body | None = None


def _log(type_: str, details_of):
    def handle(cmd: Any, uow: UnitOfWork) -> UUID:
        client_id = cmd.client_id
        if cmd.client_id is not None:
            uow.get(Client, cmd.client_id, field="client_id")
        if cmd.deal_id is not None:
            deal = uow.get(Deal, cmd.deal_id, field="deal_id")
            client_id = client_id or deal.client_id
        user = cmd.user_id if cmd.user_id is not None else uow.principal.user_id
        if user is not None:
            ensure_user(uow.conn, uow.org_id, user, field="user_id")
        activity = Activity.log(
            uow.org_id, type_, client_id=client_id, deal_id=cmd.deal_id, user_id=user,
            occurred_at=cmd.occurred_at or datetime.now(timezone.utc), subject=cmd.subject, body=cmd.body,
            details=msgspec.to_builtins(details_of(cmd)), created_by=uow.principal.user_id,
        )
        uow.add(activity)
        return activity.id

    return handle


class LogCall(LogBase, kw_only=True):
    """Log a phone call with a client and/or deal: direction, duration in minutes, outcome."""

    direction: Direction | None = None
    duration_minutes: Annotated[int, Meta(ge=0, le=1440)] | None = None
    outcome: Annotated[str, Meta(max_length=200, description="E.g. 'interested', 'no answer', 'call back'.")] | None = None


class LogMeeting(LogBase, kw_only=True):
    """Log a past meeting or schedule a future one: start (occurred_at), end, attendees, location."""

    end: Annotated[datetime | None, Meta(description="When it ends (ISO 8601).")] = None
    attendees: Annotated[list[Annotated[str, Meta(max_length=200)]], Meta(max_length=50, description="Names or e-mails.")] = []
    location: Annotated[str, Meta(max_length=300)] | None = None


class LogEmail(LogBase, kw_only=True):
    """Log an e-mail exchanged with a client (does not send one): direction, subject, snippet."""

    direction: Direction | None = None
    snippet: Annotated[str, Meta(max_length=2000)] | None = None


class LogNote(LogBase, kw_only=True):
    """Log a free note on the timeline of a client and/or deal."""


LOG_READS = ("clients", "deals")  # the client and deal it concerns are checked, and a deal gives its client
activities.command("log_call", input=LogCall, output=ActivityOut, returns=UUID, present=present_activity,
                 reads=LOG_READS)(
    _log("call", lambda c: {"direction": c.direction, "duration_minutes": c.duration_minutes, "outcome": c.outcome}))
activities.command("log_meeting", input=LogMeeting, output=ActivityOut, returns=UUID, present=present_activity,
                 reads=LOG_READS)(
    _log("meeting", lambda c: {"end": c.end, "attendees": c.attendees or None, "location": c.location}))
activities.command("log_email", input=LogEmail, output=ActivityOut, returns=UUID, present=present_activity,
                 reads=LOG_READS)(
    _log("email", lambda c: {"direction": c.direction, "snippet": c.snippet}))
activities.command("log_note", input=LogNote, output=ActivityOut, returns=UUID, present=present_activity,
                 reads=LOG_READS)(
    _log("note", lambda c: {}))


class UpdateActivity(Command, kw_only=True):
    """Change an activity. `details` merges into the type's details (e.g. {"outcome": "won"} for a call, {"location":
    "Milano"} for a meeting)."""

    activity_id: ActivityId
    subject: Subject | None | UnsetType = UNSET
    body: Body | None | UnsetType = UNSET
    occurred_at: When | UnsetType = UNSET
    user_id: UUID | UnsetType = UNSET
    details: dict[str, Any] | UnsetType = UNSET


def _update(a: Activity, cmd: UpdateActivity, uow: UnitOfWork) -> None:
    changes = sent(cmd, ACTIVITY_FIELDS)
    if "user_id" in changes:
        ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
    if "details" in changes:
        changes["details"] = msgspec.to_builtins(changes["details"])
    a.update(changes)


activities.act("update", UpdateActivity, _update, presents_entity=True)


class DeleteActivity(Command, kw_only=True):
    """Delete an activity; it disappears from lists and timelines."""

    activity_id: ActivityId


activities.delete(DeleteActivity)
