"""Audit: what happened to any entity, what it was at a moment, and bringing it back, for every aggregate type.

Nothing here knows one resource from another. Entity types are the event-sourced aggregates the toolsets are
built on (`Toolset.aggregate`) and the other aggregates of their domain modules (a wiki category beside the wiki
page, a campaign's mailing lists); each belongs to a permission resource: its toolset's, else the resources of
the read models that hold it (a note: clients and deals). States come from the entity's own events, replayed with
the event store's mapper (`Aggregate.Event.mutate`): a version's state is the aggregate's own attributes after
that event, and a change is the difference between two states, field by field (nested mappings by key).

Restore (`restore`) appends one compensating `<Aggregate>.Reinstated` event carrying the state of the chosen
version (domain.base); history is never rewritten. The personal values in that state are sealed with their
person's key like those of the events they came from (application.personal_data.STATE), so an erasure reaches a
restored entity too. It is refused, saying why, when
- the entity was merged into another (a merge is not undone by bringing one side back),
- a read model could not take it back (it keeps the entity's rows but cannot remove them, e.g. invoices imported
  from FattureInCloud; or the deletion carries data for other read models, e.g. a custom field's values; or a
  consumer that is not rebuildable keeps its own copy, e.g. a workflow's triggers),
- an entity it points to is gone: an aggregate of the organization that is deleted now (its client, pipeline,
  project, parent page, ...), or a part of one that was removed since (a pipeline's stage),
- replaying it into the read models fails: every read model that takes restores applies it inside a transaction
  that is rolled back (a dry run), so a restore that would be refused by a table's rule is refused here instead of
  being parked by the projector.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.domain import CanInitAggregate
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from application.errors import PermissionDenied
from application.permissions import RESOURCES
from application.registry import Registry
from domain.base import TenantAggregate, public_state
from domain.errors import Conflict, DomainError, NotFound
from projections import audit as audit_q, pagination
from projections.base import Projection, aggregate_of
from projections.projector import reinstate_entity

LABELS = ("title", "name", "business_name", "label", "subject", "domain", "value", "email", "number")
"""Attributes that name an entity, in order of preference: the name shown beside its id."""
SETTINGS_TYPES = ("api_token", "connection", "organization", "role", "user")
"""Entity types of the settings log (`settings_changes`): auth tables, changed without events."""


def type_name(kind: type) -> str:
    return str(getattr(kind, "entity_name", kind.__name__)).lower().replace(" ", "_")


def _subclasses(cls: type) -> Iterable[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@cache
def entity_types() -> dict[str, type]:
    """Entity type name (`deal`, `wiki_page`) -> aggregate class, for every aggregate of the domain (every domain
    module is imported, so a resource added later is here without a line of audit code)."""
    import importlib
    import pkgutil

    import domain

    for module in pkgutil.iter_modules(domain.__path__):
        importlib.import_module(f"domain.{module.name}")
    out: dict[str, type] = {}
    for kind in sorted(_subclasses(TenantAggregate), key=lambda k: (k.__module__, k.__qualname__)):
        if kind.__module__.startswith("domain.") and "entity_name" in vars(kind) and "." not in kind.__qualname__:
            out.setdefault(type_name(kind), kind)
    return dict(sorted(out.items()))


@cache
def _projections() -> tuple[Projection, ...]:
    from projections.inventory import all_projections

    return tuple(all_projections())


def _resources_from_projections(kind: type) -> tuple[str, ...]:
    """The resources of the read models that hold entities of this kind (handle their creation)."""
    out: list[str] = []
    for p in _projections():
        if p.rebuildable and p.restore_by_replay and any(
                issubclass(c, CanInitAggregate) and aggregate_of(c) is kind for c in p._handlers):
            out += [r for r in p.resources if r not in out]
    return tuple(out)


def resources_of(kind: type, reg: Registry) -> tuple[str, ...]:
    """The permission resources whose data an entity of this kind is: its toolset's (or the toolset of its
    domain module), else those of the read models holding it."""
    toolsets = [t for t in reg.toolsets.values() if t.aggregate is kind]
    toolsets = toolsets or [t for t in reg.toolsets.values()
                            if t.aggregate is not None and t.aggregate.__module__ == kind.__module__]
    if toolsets:
        return (toolsets[0].name,)
    return tuple(r for r in _resources_from_projections(kind) if r in RESOURCES) or ("settings",)


def toolset_of(kind: type, reg: Registry) -> Any:
    return next((t for t in reg.toolsets.values() if t.aggregate is kind), None)


# -- values for people ---------------------------------------------------------------------------------------
def readable(value: Any) -> Any:
    """JSON-able: ids and times as text, decimals as text, mappings with text keys."""
    return msgspec.to_builtins(value, enc_hook=str, str_keys=True)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Field-level changes between two readable states: mappings are compared key by key (`lines.<id>.quantity`),
    anything else as a whole. A field appearing or vanishing has no `before` or no `after`."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in [*before, *(k for k in after if k not in before)]:
            name = f"{path}.{key}" if path else str(key)
            if key not in after:
                if not _empty(before[key]):
                    out.append({"field": name, "before": before[key]})
            elif key not in before:
                if not _empty(after[key]):
                    out.append({"field": name, "after": after[key]})
            else:
                out += diff(before[key], after[key], name)
        return out
    if before == after:
        return []
    change: dict[str, Any] = {"field": path or "value"}
    if before is not None:
        change["before"] = before
    if after is not None:
        change["after"] = after
    return [change]


def label_of(state: dict[str, Any] | None) -> str | None:
    if not state:
        return None
    for key in LABELS:
        value = state.get(key)
        if isinstance(value, str) and value.strip():
            return value[:200]
    return None


# -- one entity's events --------------------------------------------------------------------------------------
@dataclass
class Entity:
    """An entity of the caller's organization: its stored events, oldest first, decoded when first needed."""

    id: UUID
    kind: type
    records: list[tuple[Any, ...]]
    """(notification_id, originator_id, originator_version, topic, state, organization_id), oldest first."""
    decode: Callable[[tuple[Any, ...]], Any]
    _events: list[Any] = field(default_factory=list)

    @property
    def type(self) -> str:
        return type_name(self.kind)

    @property
    def version(self) -> int:
        return self.records[-1][2]

    @property
    def last_topic(self) -> str:
        return self.records[-1][3]

    @property
    def deleted(self) -> bool:
        return self.last_topic.endswith((".Deleted", ".MergedInto"))

    @property
    def merged(self) -> bool:
        return self.last_topic.endswith(".MergedInto")

    def event(self, index: int) -> Any:
        while len(self._events) <= index:
            self._events.append(self.decode(self.records[len(self._events)]))
        return self._events[index]

    @property
    def events(self) -> list[Any]:
        self.event(len(self.records) - 1)
        return self._events

    def states(self, upto: int | None = None) -> Iterable[tuple[Any, Any]]:
        """(event, aggregate after it) for versions 1..upto; the same aggregate object, mutated."""
        aggregate = None
        for index in range(len(self.records) if upto is None else min(upto, len(self.records))):
            event = self.event(index)
            aggregate = event.mutate(aggregate)
            yield event, aggregate

    def at_version(self, version: int) -> Any:
        aggregate = None
        for _, aggregate in self.states(version):
            pass
        return aggregate


def decoder(mapper: Any) -> Callable[[tuple[Any, ...]], Any]:
    """Decodes an `entity_events` record with the given mapper (the event store's)."""
    def decode(record: tuple[Any, ...]) -> Any:
        return mapper.to_domain_event(StoredEvent(originator_id=record[1], originator_version=record[2],
                                                  topic=record[3], state=bytes(record[4])))
    return decode


def default_decoder() -> Callable[[tuple[Any, ...]], Any]:
    """Decodes as the event store does (application.workflow_engine.event_mapper keeps the same transcodings)."""
    from application.workflow_engine import event_mapper

    return decoder(event_mapper())


def load(conn: Any, org_id: UUID, entity_id: UUID, reg: Registry, decode: Callable[[tuple[Any, ...]], Any] | None = None
         ) -> Entity | None:
    """The entity's events if it is an entity of this organization (another tenant's id is unknown here)."""
    records = audit_q.entity_events(conn, entity_id)
    if not records or any(r[5] not in (None, org_id) for r in records):
        return None
    kinds = entity_types()
    kind = next((k for k in kinds.values() if records[0][3].startswith(get_topic(k) + ".")), None)
    if kind is None:
        return None
    entity = Entity(entity_id, kind, records, decode or default_decoder())
    if getattr(entity.event(0), "org_id", org_id) != org_id:
        return None
    return entity


def require(conn: Any, org_id: UUID, entity_id: UUID, reg: Registry, decode: Any = None) -> Entity:
    entity = load(conn, org_id, entity_id, reg, decode)
    if entity is None:
        raise NotFound("entity", entity_id, field="entity_id")
    return entity


# -- who did it ------------------------------------------------------------------------------------------------
def actor(row: dict[str, Any], names: dict[str, dict[Any, Any]], *, workflow_names: bool = True
          ) -> dict[str, Any] | None:
    """Who caused a change: the user (and the API token or OAuth client they used), or the workflow run (its
    workflow's name is workflows data: `workflow_names` False leaves it out)."""
    out: dict[str, Any] = {}
    if row.get("user_id") is not None:
        out["user_id"] = row["user_id"]
        out["user_name"] = names["users"].get(row["user_id"])
    if row.get("token_id") is not None:
        out["token_id"] = row["token_id"]
        out["token_name"] = names["tokens"].get(row["token_id"])
    if row.get("oauth_client_id") is not None:
        out["oauth_client_id"] = row["oauth_client_id"]
        out["oauth_client_name"] = names["clients"].get(row["oauth_client_id"])
    if row.get("workflow_run_id") is not None:
        out["workflow_run_id"] = row["workflow_run_id"]
        workflow = names["runs"].get(row["workflow_run_id"])
        if workflow is not None:
            out["workflow_id"], out["workflow_name"] = workflow[0], workflow[1] if workflow_names else None
    return {k: v for k, v in out.items() if v is not None} or None


def who(row: dict[str, Any], names: dict[str, dict[Any, Any]]) -> str:
    """The actor in words, for CLI output and messages."""
    a = actor(row, names) or {}
    if "workflow_name" in a:
        return f"workflow {a['workflow_name']!r}"
    person = a.get("user_name") or ("a user" if "user_id" in a else "the system")
    via = a.get("token_name") or a.get("oauth_client_name")
    return f"{person} (via {via})" if via else person


# -- history --------------------------------------------------------------------------------------------------
@dataclass
class HistoryView:
    entity: Entity
    items: list[dict[str, Any]]
    name: str | None
    next_cursor: str | None
    omitted: list[str] = field(default_factory=list)


def history(conn: Any, org_id: UUID, entity: Entity, *, newest_first: bool, limit: int, cursor: str | None,
            with_values: bool, workflow_names: bool = True, name: str | None = None) -> HistoryView:
    """One page of the entity's changes: time, event, who, tool, correlation id, W3C trace id (when the request
    sent a traceparent) and (`with_values`) the fields
    that changed. States are replayed from the first event; only the page's ones are rendered."""
    after = _version_cursor(cursor, entity) if cursor else None
    versions = [r[2] for r in entity.records]
    if newest_first:
        versions.reverse()
    if after is not None:
        versions = [v for v in versions if (v < after if newest_first else v > after)]
    page = set(versions[:limit])
    more = len(versions) > limit
    page_records = [r for r in entity.records if r[2] in page]
    causes = audit_q.causes_of(conn, org_id, [r[0] for r in page_records])
    names = audit_q.actor_names(conn, org_id, list(causes.values()))
    items: list[dict[str, Any]] = []
    previous: dict[str, Any] = {}
    last_state: dict[str, Any] = {}
    want_name = with_values and name is None  # the current name, from the last state, unless the caller knows it
    need = {v - 1 for v in page} | page | ({entity.version} if want_name else set())
    upto = max(need, default=0)
    for (event, aggregate), record in zip(entity.states(upto), entity.records, strict=False):
        version = event.originator_version
        state = readable(public_state(aggregate)) if with_values and version in need else None
        if version in page:
            cause = causes.get(record[0], {})
            item: dict[str, Any] = {
                "version": version, "notification_id": record[0], "at": event.timestamp,
                "event": type(event).__name__, "by": actor(cause, names, workflow_names=workflow_names),
                "tool": cause.get("tool"), "correlation_id": cause.get("correlation_id"),
                "trace_id": cause.get("trace_id")}
            if isinstance(event, TenantAggregate.Reinstated):
                item["restored_to_version"] = event.to_version
            if with_values:
                item["changes"] = diff(previous, state)
            items.append(item)
        if state is not None:
            previous = last_state = state
    items.sort(key=lambda i: i["version"], reverse=newest_first)
    next_cursor = _encode_version(items[-1]["version"], entity.id) if more and items else None
    return HistoryView(entity, items, (label_of(last_state) if want_name else name) if with_values else None,
                       next_cursor)


def _encode_version(version: int, entity_id: UUID) -> str:
    return pagination.seal(entity_id.bytes + pagination.pack4(version))


def _version_cursor(cursor: str, entity: Entity) -> int:
    return position_cursor(cursor, entity.id)


def position_cursor(cursor: str, entity_id: UUID) -> int:
    """The position a history cursor holds, checked to be one this entity's pages wrote."""

    def read(body: bytes) -> int:
        if len(body) != 20 or UUID(bytes=body[:16]) != entity_id:
            raise ValueError
        position = pagination.unpack4(body[16:])
        if position < 0:
            raise ValueError
        return position

    return pagination.unseal(cursor, read)


def encode_position(position: int, entity_id: UUID) -> str:
    return _encode_version(position, entity_id)


def settings_history(conn: Any, org_id: UUID, entity_id: UUID, *, newest_first: bool, with_values: bool,
                     workflow_names: bool = True) -> tuple[list[dict[str, Any]], str]:
    """The settings log of a user, role, API token, ... (auth tables: changed without events), and its type."""
    rows = audit_q.settings_entity_changes(conn, org_id, str(entity_id))
    names = audit_q.actor_names(conn, org_id, rows)
    items = []
    for row in reversed(rows) if newest_first else rows:
        item = {"settings_change_id": row["id"], "at": row["occurred_at"], "event": row["action"],
                "by": actor(row, names, workflow_names=workflow_names), "tool": row["tool"],
                "correlation_id": row["correlation_id"]}
        if with_values:
            item["changes"] = settings_changes(row["changes"])
        items.append(item)
    return items, rows[-1]["entity_type"] if rows else "settings"


def settings_changes(changes: Any) -> list[dict[str, Any]]:
    """The settings log's {field: {before, after}} as field changes."""
    out = []
    for name, value in (changes or {}).items():
        if isinstance(value, dict) and ("before" in value or "after" in value):
            change = {"field": name}
            if value.get("before") is not None:
                change["before"] = value["before"]
            if value.get("after") is not None:
                change["after"] = value["after"]
            out.append(change)
        else:
            out.append({"field": name, "after": value})
    return out


# -- as of -----------------------------------------------------------------------------------------------------
def as_of(entity: Entity, *, at: datetime | None, version: int | None) -> dict[str, Any]:
    """The entity at a moment (the last version recorded at or before `at`) or at a version."""
    if version is not None and version > entity.version:
        raise DomainError(f"{entity.type} {entity.id} has versions 1 to {entity.version}", field="version")
    chosen = None
    for event, aggregate in entity.states():
        if (version is not None and event.originator_version > version) or (at is not None and event.timestamp > at):
            break
        chosen = (event, readable(public_state(aggregate)))
    if chosen is None:
        return {"exists": False}
    event, state = chosen
    return {"exists": True, "version": event.originator_version, "version_at": event.timestamp,
            "deleted": bool(state.get("deleted")), "name": label_of(state), "state": state}


# -- restore ---------------------------------------------------------------------------------------------------
def restorable(kind: type, reg: Registry) -> str | None:
    """Why entities of this kind cannot be restored, or None (see the module docstring)."""
    deleted = getattr(kind, "Deleted", None)
    reinstated = getattr(kind, "Reinstated", None)
    name = type_name(kind).replace("_", " ")
    name = f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"
    if reinstated is None or deleted is None:
        return f"{name} cannot be restored"
    import dataclasses

    if [f for f in dataclasses.fields(deleted) if f.name not in ("originator_id", "originator_version", "timestamp")]:
        return (f"{name} cannot be restored: its deletion changed other entities' records (e.g. a custom field's "
                "values were removed from every entity); create it again instead")
    resources = set(resources_of(kind, reg))
    homes = {p.__module__ for p in _projections() if p.rebuildable and resources & set(p.resources)}
    for p in _projections():
        handled = {c for c in p._handlers if aggregate_of(c) is kind}
        if not p.rebuildable:
            # A consumer of the resource's own that cannot replay (its rows record what already happened, e.g. the
            # workflow trigger consumer) and that follows this type's deletions keeps its own record of them.
            if type(p).__module__ in homes and get_topic(deleted) in set(p.topics()):
                return (f"{name} cannot be restored: the {p.name} consumer keeps its own record of it and cannot "
                        "replay; create it again instead")
            continue
        if any(issubclass(c, CanInitAggregate) for c in handled) and p._handlers.get(reinstated) == "_reinstate" \
                and deleted not in p._handlers:
            return (f"{name} cannot be restored: the {p.name} read model keeps it but cannot take it back "
                    "(it has no deletion)")
    return None


def plan_restore(entity: Entity, to_version: int | None) -> int:
    """The version to go back to: the one given, or (for a deleted entity) the last before its deletion."""
    if entity.merged:
        survivor = getattr(entity.events[-1], "survivor_id", None)
        raise Conflict(f"{entity.type} {entity.id} was merged into {survivor}, which holds its data now: a merge "
                       "is not undone by a restore", field="entity_id")
    if to_version is None:
        if not entity.deleted:
            raise DomainError(f"{entity.type} {entity.id} is not deleted: give to_version to bring it back to an "
                              f"earlier version (1 to {entity.version - 1}; see crm_audit_entity_history)",
                              field="to_version")
        return entity.version - 1
    if entity.version == 1:
        raise DomainError(f"{entity.type} {entity.id} has one version only: there is no earlier one to go back to",
                          field="to_version")
    if not 1 <= to_version < entity.version:
        raise DomainError(f"to_version must be between 1 and {entity.version - 1} (the entity's current version is "
                          f"{entity.version})", field="to_version")
    return to_version


def check_references(conn: Any, org_id: UUID, entity: Entity, state: dict[str, Any], reg: Registry,
                     load_entity: Callable[[UUID], Entity | None], explain: Callable[[Entity], str]) -> None:
    """Every entity the restored version points to is still there: an aggregate of the organization that is not
    deleted (merged ones are fine: read models follow the merge), or a part of one that was not removed since."""
    ids = {name: value for name, value in state.items() if isinstance(value, UUID) and value != entity.id
           and name != "org_id"}
    live: dict[str, Entity] = {}
    missing_parts: dict[str, UUID] = {}
    for name, value in ids.items():
        other = load_entity(value)
        if other is not None:
            if other.deleted and not other.merged:
                raise Conflict(f"cannot restore {entity.type} {entity.id}: its {name} points to {other.type} {value}, "
                               f"which {explain(other)}; restore that first (crm_audit_restore_entity)",
                               field="entity_id")
            live[name] = other
        elif conn.execute("SELECT 1 FROM users WHERE id = %s AND organization_id = %s", (value, org_id)).fetchone() \
                is None:
            missing_parts[name] = value
    for name, value in missing_parts.items():
        for owner_field, other in live.items():
            raw = [bytes(r[4]) for r in other.records]
            if any(value.hex.encode() in s or str(value).encode() in s for s in raw):
                now = json.dumps(readable(public_state(other.at_version(other.version))))
                if str(value) not in now and value.hex not in now:
                    raise Conflict(f"cannot restore {entity.type} {entity.id}: its {name} {value} was removed from "
                                   f"{other.type} {label_of(readable(public_state(other.at_version(other.version)))) or other.id}"
                                   f" ({owner_field}) since; that rule would break", field="entity_id")


class _DryRun(Exception):
    pass


def dry_run(conn: Any, event: Any, decode_notification: Callable[[Any], Any]) -> None:
    """Apply the restore to every read model that takes it, inside a transaction that is rolled back, holding
    those read models' tracking rows (the projector waits a moment): a failure is a refusal now, not a parked
    event later."""
    projections = [p for p in _projections() if p._handlers.get(type(event)) == "_reinstate"]
    if not projections:
        return
    names = sorted(p.name for p in projections)
    try:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '3s'")
            conn.execute("SELECT name FROM projection_tracking WHERE name = ANY(%s) ORDER BY name FOR UPDATE", (names,))
            for p in projections:
                current = p.name
                with conn.cursor() as cur:
                    reinstate_entity(p, cur, event, decode_notification, before=None)
            raise _DryRun
    except _DryRun:
        return
    except psycopg.errors.LockNotAvailable:
        raise Conflict("the read models are being rebuilt; try the restore again in a moment",
                       field="entity_id") from None
    except psycopg.errors.QueryCanceled:
        raise
    except (psycopg.Error, Exception) as e:  # noqa: BLE001 - any failure of a replay is a refusal
        if isinstance(e, psycopg.OperationalError) and conn.broken:
            raise
        diag = getattr(e, "diag", None)
        rule = getattr(diag, "constraint_name", None) if diag is not None else None
        raise Conflict(f"cannot restore {type_name(aggregate_of(type(event)))} {event.originator_id}: the "
                       f"{current} read model refuses it ({type(e).__name__}"
                       f"{', rule ' + rule if rule else ''}); something it needs changed since", field="entity_id"
                       ) from None


def missing_permission(principal: Any, resources: Iterable[str], action: str, tool: str) -> PermissionDenied | None:
    missing = [r for r in resources if not principal.can(r, action)]
    if not missing:
        return None
    verb = {"read": "shows", "write": "changes"}[action]
    parts = ", ".join(f"{r}:{action} ({tool} {verb} {r})" for r in missing)
    return PermissionDenied(f"missing permission{'s' if len(missing) > 1 else ''} {parts}: the token or the "
                            "user's role does not grant it")
