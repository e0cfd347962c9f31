"""Audit: the `crm_audit_*` tools. Who changed what and when, an entity as it was, and bringing one back.

Generic over every event-sourced entity type (application/audit.py): the history and the states come from the
entity's own events, the feed from the event store's cause rows and the settings log. The audit resource grants
the trail (times, events, who, tools); the values themselves are the entity's resource's data, so field changes
and states are shown only with read on it (else left out and listed in `omitted`), and a restore needs write on
it as well as audit:write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application import audit
from application.registry import registry
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, CursorArg, Limit, Query
from application.toolset import Toolset
from domain.base import public_state
from domain.errors import DomainError, NotFound
from projections import audit as audit_q

audit_toolset = Toolset(
    "audit", title="Audit", description="Who changed what and when: any entity's history with field changes, an "
                                        "entity as it was at a moment, the organization's recent changes, restore of "
                                        "deleted entities or earlier versions")

EntityId = Annotated[UUID, Meta(description="Any entity's id (a lead/client, deal, task, wiki page, ...) as its own "
                                            "tools or crm_audit_recent_changes give it; also a user, role or API token.")]
ENTITY_TYPES = tuple(sorted({*audit.entity_types(), *audit.SETTINGS_TYPES}))
EntityType = Literal[ENTITY_TYPES]  # type: ignore[valid-type]
When = Annotated[datetime, Meta(tz=True, description="ISO 8601 with offset, e.g. 2026-11-27T15:30:00+01:00.")]
HISTORY_TOOL, AS_OF_TOOL, RESTORE_TOOL = "crm_audit_entity_history", "crm_audit_entity_as_of", "crm_audit_restore_entity"


class Actor(Struct, kw_only=True, omit_defaults=True):
    """Who: a user (and the API token or OAuth client used), or a workflow run acting for its activator."""

    user_id: UUID | None = None
    user_name: str | None = None
    token_id: UUID | None = None
    token_name: str | None = None
    oauth_client_id: str | None = None
    oauth_client_name: str | None = None
    workflow_run_id: UUID | None = None
    workflow_id: UUID | None = None
    workflow_name: str | None = None


TraceId = Annotated[str | None, Meta(description="The W3C trace id of the request, when it sent a traceparent.")]


class FieldChange(Struct, kw_only=True, omit_defaults=True):
    field: str
    before: Any = None
    after: Any = None


class HistoryEntry(Struct, kw_only=True, omit_defaults=True):
    at: datetime
    event: str
    version: int | None = None
    notification_id: int | None = None
    settings_change_id: int | None = None
    by: Actor | None = None
    tool: str | None = None
    correlation_id: UUID | None = None
    trace_id: TraceId = None
    restored_to_version: int | None = None
    changes: list[FieldChange] = []


class History(Struct, kw_only=True, omit_defaults=True):
    entity_id: UUID
    entity_type: str
    name: str | None = None
    version: int | None = None
    deleted: bool = False
    items: list[HistoryEntry]
    next_cursor: str | None = None
    omitted: list[str] = []


class EntityHistory(Query, kw_only=True):
    """Every change to one entity of any type (deleted ones too): time, event, who (user, API token, OAuth
    client or workflow run), tool, correlation id and the fields that changed (before/after). For one entity;
    crm_audit_recent_changes covers the whole organization."""

    entity_id: EntityId
    sort: Literal["oldest_first", "newest_first"] = "oldest_first"
    limit: Limit = 25
    cursor: CursorArg = None


def _type_resources(kind: type) -> tuple[str, ...]:
    return audit.resources_of(kind, registry)


@audit_toolset.query("entity_history", output=History)
def entity_history(q: EntityHistory, ctx: QueryContext) -> History:
    newest_first = q.sort == "newest_first"
    entity = audit.load(ctx.conn, ctx.org_id, q.entity_id, registry)
    if entity is not None:
        resources = _type_resources(entity.kind)
        with_values = all(ctx.principal.can(r, "read") for r in resources)
        view = audit.history(ctx.conn, ctx.org_id, entity, newest_first=newest_first, limit=q.limit,
                             cursor=q.cursor, with_values=with_values,
                             workflow_names=ctx.principal.can("workflows", "read"),
                             name=_current_name(ctx, entity) if with_values else None)
        omitted = [] if with_values else [f"field changes and name (needs {', '.join(r + ':read' for r in resources)})"]
        return History(entity_id=entity.id, entity_type=entity.type, name=view.name, version=entity.version,
                       deleted=entity.deleted, items=msgspec.convert(view.items, list[HistoryEntry]),
                       next_cursor=view.next_cursor, omitted=omitted)
    # not an event-sourced entity: a user, role, API token, ... of the settings log
    with_values = ctx.principal.can("settings", "read")
    items, kind = audit.settings_history(ctx.conn, ctx.org_id, q.entity_id, newest_first=newest_first,
                                         with_values=with_values, workflow_names=ctx.principal.can("workflows", "read"))
    if not items:
        raise NotFound("entity", q.entity_id, field="entity_id")
    start = audit.position_cursor(q.cursor, q.entity_id) if q.cursor else 0
    more = len(items) > start + q.limit
    return History(entity_id=q.entity_id, entity_type=kind, items=msgspec.convert(items[start:start + q.limit],
                   list[HistoryEntry]), next_cursor=audit.encode_position(start + q.limit, q.entity_id) if more
                   else None, omitted=[] if with_values else ["field changes (needs settings:read)"])


def _current_name(ctx: QueryContext, entity: audit.Entity) -> str | None:
    """The entity's name as its toolset's read model shows it now (no replay of every event for it), or None."""
    toolset = audit.toolset_of(entity.kind, registry)
    present = getattr(toolset, "present_row", None) or getattr(toolset, "present", None)
    if entity.deleted or present is None:
        return None
    try:
        return audit.label_of(msgspec.to_builtins(present(ctx, entity.id)))
    except Exception:  # noqa: BLE001 - not in the read model (yet): the name comes from the events instead
        return None


# -- as of -----------------------------------------------------------------------------------------------------
class AsOf(Struct, kw_only=True, omit_defaults=True):
    entity_id: UUID
    entity_type: str
    exists: Annotated[bool, Meta(description="False: the entity did not exist yet at that moment.")]
    version: int | None = None
    version_at: datetime | None = None
    deleted: bool = False
    name: str | None = None
    state: dict[str, Any] | None = None
    omitted: list[str] = []


class EntityAsOf(Query, kw_only=True):
    """One entity as it was at a moment (`at`) or at a version (from crm_audit_entity_history), computed from its
    events: every field, deleted or not. What crm_audit_restore_entity would bring back."""

    entity_id: EntityId
    at: When | None = None
    version: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None


@audit_toolset.query("entity_as_of", output=AsOf)
def entity_as_of(q: EntityAsOf, ctx: QueryContext) -> AsOf:
    if (q.at is None) == (q.version is None):
        raise DomainError("give exactly one of at or version", field="at" if q.at is None else "version")
    entity = audit.require(ctx.conn, ctx.org_id, q.entity_id, registry)
    view = audit.as_of(entity, at=q.at, version=q.version)
    resources = _type_resources(entity.kind)
    if not all(ctx.principal.can(r, "read") for r in resources):
        view.pop("state", None)
        view.pop("name", None)
        view["omitted"] = [f"state and name (needs {', '.join(r + ':read' for r in resources)})"]
    return AsOf(entity_id=entity.id, entity_type=entity.type, **view)


# -- recent changes ---------------------------------------------------------------------------------------------
class Change(Struct, kw_only=True, omit_defaults=True):
    at: datetime
    entity_type: str
    entity_id: str
    name: Annotated[str | None, Meta(description="The entity's name when it was created.")] = None
    event: str
    version: int | None = None
    notification_id: int | None = None
    settings_change_id: int | None = None
    by: Actor | None = None
    tool: str | None = None
    correlation_id: UUID | None = None
    trace_id: TraceId = None
    changes: list[FieldChange] = []


class Changes(Struct, kw_only=True, omit_defaults=True):
    items: list[Change]
    next_cursor: str | None = None
    omitted: list[str] = []


class RecentChanges(Query, kw_only=True):
    """The organization's changes, newest first: every entity's events and the settings changes (users, roles,
    API tokens, ...), each with who and which tool, in a time window, by entity type, user and tool. E.g. who
    deleted a deal: entity_type='deal', then crm_audit_entity_history on its entity_id."""

    since: When | None = None
    until: Annotated[datetime, Meta(tz=True, description="Exclusive; ISO 8601 with offset.")] | None = None
    entity_type: EntityType | None = None
    user_id: Annotated[UUID | None, Meta(description="Only changes by this user (crm_users_list).")] = None
    tool: Annotated[str, Meta(max_length=100, description="Only changes made by this tool, e.g. "
                                                            "'crm_deals_delete'.")] | None = None
    limit: Limit = 25
    cursor: CursorArg = None


@audit_toolset.query("recent_changes", output=Changes)
def recent_changes(q: RecentChanges, ctx: QueryContext) -> Changes:
    if q.since is not None and q.until is not None and q.until <= q.since:
        raise DomainError("until must be after since", field="until")
    types = audit.entity_types()
    owners: tuple[str, ...] | None = None
    settings_types: tuple[str, ...] | None = None
    if q.entity_type is not None:
        kind = types.get(q.entity_type)
        owners = (audit_topic(kind),) if kind is not None else ()
        settings_types = (q.entity_type,) if q.entity_type in audit.SETTINGS_TYPES else ()
    f = audit_q.FeedFilter(since=q.since, until=q.until, user_id=q.user_id, tool=q.tool, owners=owners,
                           settings_types=settings_types)
    rows, cursor = audit_q.changes_page(ctx.conn, ctx.org_id, f, q.limit, q.cursor)
    names = audit_q.actor_names(ctx.conn, ctx.org_id, rows)
    by_topic = {audit_topic(k): k for k in types.values()}
    event_rows = [r for r in rows if r["source"] == audit_q.EVENTS]
    labels = _labels(ctx, event_rows, by_topic)
    settings_read = ctx.principal.can("settings", "read")
    items: list[Change] = []
    for r in rows:
        who = audit.actor(r, names, workflow_names=ctx.principal.can("workflows", "read"))
        common = {"at": r["at"], "by": msgspec.convert(who, Actor) if who else None, "tool": r["tool"],
                  "correlation_id": r["correlation_id"], "trace_id": r.get("trace_id")}
        if r["source"] == audit_q.EVENTS:
            owner, _, event = r["topic"].rpartition(".")
            kind = by_topic.get(owner)
            items.append(Change(
                **common, entity_type=audit.type_name(kind) if kind else owner.rpartition(":")[2].lower(),
                entity_id=str(r["originator_id"]), name=labels.get(r["originator_id"]), event=event,
                version=r["originator_version"], notification_id=r["seq"]))
        else:
            changes = audit.settings_changes(r["changes"]) if settings_read else []
            items.append(Change(**common, entity_type=r["entity_type"], entity_id=r["entity_id"], event=r["action"],
                                settings_change_id=r["seq"], changes=msgspec.convert(changes, list[FieldChange])))
    omitted = [] if settings_read or not any(r["source"] == audit_q.SETTINGS for r in rows) else [
        "settings field changes (needs settings:read)"]
    unreadable = sorted({r for k in by_topic.values() for r in _type_resources(k) if not ctx.principal.can(r, "read")})
    if unreadable and any(labels.get(r["originator_id"]) is None for r in event_rows):
        omitted.append(f"names of entities of {', '.join(unreadable)} (needs read on them)")
    return Changes(items=items, next_cursor=cursor, omitted=omitted)


def audit_topic(kind: type) -> str:
    from eventsourcing.utils import get_topic

    return get_topic(kind)


def _labels(ctx: QueryContext, rows: list[dict[str, Any]], by_topic: dict[str, type]) -> dict[UUID, str]:
    """Names beside ids, from each entity's creation, for the entity types the caller may read."""
    wanted = []
    for r in rows:
        kind = by_topic.get(r["topic"].rpartition(".")[0])
        if kind is not None and all(ctx.principal.can(res, "read") for res in _type_resources(kind)):
            wanted.append(r["originator_id"])
    decode = audit.default_decoder()
    out: dict[UUID, str] = {}
    for row in audit_q.first_events(ctx.conn, ctx.org_id, sorted(set(wanted), key=str)):
        try:
            event = decode((None, row["originator_id"], row["originator_version"], row["topic"], row["state"], None))
        except Exception:  # noqa: BLE001 - a name is a courtesy; the change is listed without it
            continue
        payload = dict(event.__dict__)
        for nested in list(payload.values()):
            if isinstance(nested, dict):
                payload = {**nested, **payload}
        label = audit.label_of(audit.readable({k: v for k, v in payload.items() if isinstance(v, str)}))
        if label:
            out[row["originator_id"]] = label
    return out


# -- restore ------------------------------------------------------------------------------------------------------
class Restored(Struct, kw_only=True, omit_defaults=True):
    entity_id: UUID
    entity_type: str
    restored_to_version: int
    version: Annotated[int, Meta(description="The entity's version now (the restore is a new event).")]
    name: str | None = None
    entity: Annotated[dict[str, Any] | None, Meta(
        description="The entity as its own get tool shows it now (for types that have one).")] = None


class RestoreRef(Struct, kw_only=True):
    entity_id: UUID
    entity_type: str
    restored_to_version: int
    version: int
    name: str | None = None


class RestoreEntity(Command, kw_only=True):
    """Bring back a deleted entity (as it was before its deletion), or any entity to an earlier version
    (to_version, from crm_audit_entity_history; crm_audit_entity_as_of shows it), with a new event: history is
    kept. Refused, saying why, when something it needs is gone (its client, pipeline, stage, parent page)."""

    entity_id: EntityId
    to_version: Annotated[int, Meta(ge=1, le=2**31 - 1, description=(
        "The version to go back to; default for a deleted entity: the last before its deletion."))] | None = None


def _explain(conn: Any, org_id: UUID) -> Any:
    def explain(other: audit.Entity) -> str:
        row = audit_q.causes_of(conn, org_id, [other.records[-1][0]]).get(other.records[-1][0], {})
        names = audit_q.actor_names(conn, org_id, [row])
        when = row["recorded_at"].date().isoformat() if row.get("recorded_at") else "an unknown date"
        return f"was deleted on {when} by {audit.who(row, names)}"
    return explain


@audit_toolset.command("restore_entity", output=Restored, returns=RestoreRef,
                       present=lambda ctx, ref: present_restored(ctx, ref))
def restore_entity(cmd: RestoreEntity, uow: UnitOfWork) -> RestoreRef:
    decode = audit.decoder(uow.store.mapper)
    entity = audit.require(uow.conn, uow.org_id, cmd.entity_id, registry, decode)
    denied = audit.missing_permission(uow.principal, _type_resources(entity.kind), "write", RESTORE_TOOL)
    if denied is not None:
        raise denied
    target = audit.plan_restore(entity, cmd.to_version)
    reason = audit.restorable(entity.kind, registry)
    if reason is not None:
        raise DomainError(reason, field="entity_id")
    aggregate = uow.store.repository.get(entity.id)
    state = public_state(uow.store.repository.get(entity.id, version=target))
    audit.check_references(uow.conn, uow.org_id, entity, state, registry,
                           lambda other: audit.load(uow.conn, uow.org_id, other, registry, decode),
                           _explain(uow.conn, uow.org_id))
    _recordable(uow, entity, state)
    aggregate.reinstate(target, state)
    audit.dry_run(uow.conn, aggregate.pending_events[-1], uow.store.mapper.to_domain_event)
    uow.add(aggregate)
    return RestoreRef(entity_id=entity.id, entity_type=entity.type, restored_to_version=target,
                      version=aggregate.version, name=audit.label_of(audit.readable(state)))


def _recordable(uow: UnitOfWork, entity: audit.Entity, state: dict[str, Any]) -> None:
    """The state goes into an event: it must come back from the event store exactly as it is."""
    transcoder = uow.store.mapper.transcoder
    try:
        same = transcoder.decode(transcoder.encode(state)) == state
    except Exception:  # noqa: BLE001 - a value the event store has no encoding for
        same = False
    if not same:
        raise DomainError(f"{entity.type} {entity.id} cannot be restored: that version holds values the event store "
                          "cannot record as they are", field="entity_id")


def present_restored(ctx: QueryContext, ref: RestoreRef) -> Restored:
    kind = audit.entity_types().get(ref.entity_type)
    toolset = audit.toolset_of(kind, registry) if kind is not None else None
    shown = None
    if toolset is not None and toolset.present is not None:
        shown = msgspec.to_builtins(toolset.present(ctx, ref.entity_id))
    return Restored(entity_id=ref.entity_id, entity_type=ref.entity_type, restored_to_version=ref.restored_to_version,
                    version=ref.version, name=ref.name, entity=shown)
