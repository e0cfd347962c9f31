"""Permissions cover every resource a tool reads or changes, proven over every tool of the registry.

One organization holds an entity of every kind, each carrying markers `MARK-<resource>-...` in its text (a deal's
title and note, a task's checklist item, a pipeline's stage names, ...). Then every tool a token may call is
called with arguments pointing at those entities, and
(a) its result (or error) contains no marker of a resource the token may not read, and
(b) every event it appended belongs to a resource the token may write: the event's aggregate (a note's subject)
    and every resource whose read model a projection changes for it (a merge re-points deals, tasks, activities).

Two token families: one token per single resource (`resource:rwd` only), and for every tool the smallest token
its declaration allows (`Operation.needs`), which proves each declaration complete. Not markers, on purpose (see
application.registry): counts, people's names, and a service's name and code copied into a deal's lines.
A write tool may show its own resource without read on it: it returns what it wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg.rows import dict_row

from application import identity
from application.inventory import registry
from application.errors import ToolError
from application.registry import Operation
from projections.inventory import all_projections
from tests.inprocess import call
from tests.tool_args import SAMPLES, sample_args
from tests.world import seed


NEVER = {"permission_denied", "internal_error"}  # a tool the token may call may refuse the arguments, nothing else
MARKER = re.compile(r"mark-([a-z_]+)-")
AGGREGATE_RESOURCE = {
    "Client": "clients", "Recording": "clients", "Deal": "deals", "Pipeline": "pipelines", "CatalogService": "services",
    "ServiceCategory": "services", "Task": "tasks", "Activity": "activities", "Project": "projects",
    "WikiPage": "wiki", "WikiCategory": "wiki",
    "Workflow": "workflows", "WorkflowRun": "workflows", "MailingList": "newsletter", "Campaign": "newsletter",
    "Engagement": "newsletter", "BlacklistEntry": "newsletter", "SenderDomain": "newsletter", "QrCode": "qr_codes",
    "Scan": "qr_codes",
    "Template": "settings", "CustomField": "settings", "Invoice": "invoices",
    "Chat": "whatsapp", "WhatsappMessage": "whatsapp", "WhatsappAccess": "whatsapp",
}
NOTE_SUBJECT_RESOURCE = {"client": "clients", "deal": "deals", "whatsapp_chat": "whatsapp"}
PROJECTION_RESOURCE = {
    "clients": "clients", "recordings": "clients", "deals": "deals", "tasks": "tasks", "projects": "projects",
    "wiki": "wiki", "pipelines": "pipelines", "services": "services", "activities": "activities",
    "workflows": "workflows",
    "newsletter": "newsletter", "qr_codes": "qr_codes",
    "settings": "settings", "invoices": "invoices", "whatsapp": "whatsapp",
}
MIXED_PROJECTIONS = {"notes", "timeline"}  # views over several resources, changed only along with their own events
MIXED_PROJECTIONS |= {"workflow_triggers"}  # not a read model: the workflow trigger consumer


def markers(text: str) -> set[str]:
    return set(MARKER.findall(text.lower()))


# -- what a call changed ---------------------------------------------------------------------------------------
class Events:
    """The organization's stored events, decoded, and the resources each one changes."""

    def __init__(self, runtime: Any, database_url: str, organization_id: UUID) -> None:
        self.runtime = runtime
        self.conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        self.organization_id = organization_id
        self.handled_by: dict[type, set[str]] = {}
        for projection in all_projections():
            assert projection.name in PROJECTION_RESOURCE or projection.name in MIXED_PROJECTIONS, (
                f"map projection {projection.name} to the resource whose read model it is")
            for event_class in projection._handlers:
                if projection.name in PROJECTION_RESOURCE:
                    self.handled_by.setdefault(event_class, set()).add(PROJECTION_RESOURCE[projection.name])

    def head(self) -> int:
        return self.conn.execute("SELECT coalesce(max(notification_id), 0) AS n FROM stored_events").fetchone()["n"]

    def _decode(self, row: dict[str, Any]) -> Any:
        stored = StoredEvent(originator_id=row["originator_id"], originator_version=row["originator_version"],
                             topic=row["topic"], state=bytes(row["state"]))
        return self.runtime.store.mapper.to_domain_event(stored)

    def since(self, position: int) -> list[Any]:
        rows = self.conn.execute(
            "SELECT e.* FROM stored_events e JOIN event_causes c"
            " ON e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id"
            " WHERE c.organization_id = %s AND e.notification_id > %s ORDER BY e.notification_id",
            (self.organization_id, position),
        ).fetchall()
        return [self._decode(r) for r in rows]

    def resources(self, event: Any) -> set[str]:
        aggregate = type(event).__qualname__.split(".")[0]
        if aggregate == "Note":
            first = self.conn.execute("SELECT * FROM stored_events WHERE originator_id = %s AND originator_version = 1",
                                      (event.originator_id,)).fetchone()
            own = NOTE_SUBJECT_RESOURCE[self._decode(first).subject_type]
        else:
            assert aggregate in AGGREGATE_RESOURCE, f"map aggregate {aggregate} to its resource"
            own = AGGREGATE_RESOURCE[aggregate]
        return {own} | self.handled_by.get(type(event), set())


# -- calling every tool ------------------------------------------------------------------------------------------
def call_order(op: Operation) -> tuple[int, str]:
    """Reads first, then changes, then removals, merges, and deletions last, so that each call finds the world whole."""
    kind = {"query": 0, "command": 1, "destructive": 2}[op.kind]
    merges = op.name.endswith("_merge")
    deletes = op.name.endswith("_delete") or "_delete_" in op.name
    return kind + merges + 2 * deletes, op.name


@dataclass
class Checked:
    calls: int = 0
    ok: int = 0
    own_markers_seen: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)


def check_call(world: Any, principal: Any, op: Operation, readable: set[str], writable: set[str], seen: Checked) -> None:
    """Call `op` and assert (a) no marker of an unreadable resource in what came back, (b) no event outside `writable`."""
    args = sample_args(op, world.ids, {**SAMPLES, "q": "MARK"})
    before = world.events.head()
    try:
        text = json.dumps(call(world.runtime, principal, op.name, args))
        seen.ok += 1
    except ToolError as e:
        # The audit tools act on entities of any resource: a restore also needs write on the entity's resource,
        # checked when the entity is known (and refused naming that permission).
        audit_refusal = op.toolset == "audit" and e.code == "permission_denied" and "missing permission" in e.message
        assert e.code not in NEVER or audit_refusal, (op.name, e.code, e.message)
        text = e.message
        seen.errors[op.name] = e.code
    seen.calls += 1
    shown = markers(text) - markers(json.dumps(args))
    assert not shown - readable, f"{op.name} showed data of {sorted(shown - readable)} to a token reading {sorted(readable)}"
    seen.own_markers_seen |= shown
    for event in world.events.since(before):
        changed = world.events.resources(event)
        assert changed <= writable, (
            f"{op.name} changed {sorted(changed - writable)} ({type(event).__qualname__}) with a token writing {sorted(writable)}")


@dataclass
class World:
    runtime: Any
    ids: dict[str, Any]
    events: Events
    org: Any


@pytest.fixture
def world(runtime, make_org, database_url) -> World:
    org = make_org("Coverage")
    ids = seed(runtime, org.principal(database_url))
    events = Events(runtime, database_url, org.organization_id)
    yield World(runtime, ids, events, org)
    events.conn.close()


def token_principal(world: World, database_url: str, grants: dict[str, str]) -> Any:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        token, _ = identity.create_token(conn, world.org.organization_id, world.org.user_id, grants)
    return world.org.principal(database_url, token)


# Discovery tools (op.meta) have no resource of their own: they run other tools, whose checks these tests cover
# (and tests/e2e/test_discovery.py shows they apply unchanged through them).
TOOLS = [op for op in registry if not op.meta]
RESOURCES_WITH_TOOLS = sorted({op.resource for op in TOOLS})


@pytest.mark.parametrize("resource", RESOURCES_WITH_TOOLS)
def test_a_single_resource_token_sees_and_changes_only_that_resource(world, database_url, resource):
    principal = token_principal(world, database_url, {resource: "rwd"})
    # crm_users_me answers any token (it says what the token may do): it is in every selection, reading the caller.
    ops = sorted((op for op in registry.select(principal.grants) if not op.meta and not op.free), key=call_order)
    assert {op.resource for op in ops} <= {resource}
    seen = Checked()
    for op in ops:
        check_call(world, principal, op, readable={resource}, writable={resource} if op.kind != "query" else set(),
                   seen=seen)
    has_markers = resource not in {"users", "stats", "audit"}  # audit's own data is the trail: times, events, who
    assert seen.ok >= len(ops) // 2, (seen.ok, seen.errors)
    assert not has_markers or resource in seen.own_markers_seen, "the seeded data never showed: the test proves nothing"


def test_every_tool_with_the_smallest_token_its_declaration_allows(world, database_url):
    principals: dict[frozenset, Any] = {}
    seen = Checked()
    for op in sorted(TOOLS, key=call_order):
        grants: dict[str, str] = {}
        for resource, action in op.needs:
            grants[resource] = grants.get(resource, "") + action[0]
        key = frozenset(grants.items())
        if key not in principals:
            principals[key] = token_principal(world, database_url, grants)
        readable = {op.resource, *op.reads}
        writable = {op.resource, *op.writes} if op.kind != "query" else set()
        check_call(world, principals[key], op, readable, writable, seen)
    assert seen.calls == len(TOOLS)
    assert seen.ok >= len(registry) * 2 // 3, (seen.ok, seen.errors)


def test_a_refusal_names_each_missing_permission_and_the_list_hides_the_tool(world, database_url):
    board = token_principal(world, database_url, {"pipelines": "r"})
    with pytest.raises(ToolError) as e:
        call(world.runtime, board, "crm_pipelines_board")
    assert e.value.code == "permission_denied"
    assert "missing permission deals:read (crm_pipelines_board shows deals)" in e.value.message
    assert "crm_pipelines_board" not in {op.name for op in registry.select(board.grants)}
    merger = token_principal(world, database_url, {"clients": "rwd", "tasks": "w"})
    with pytest.raises(ToolError) as e:
        call(world.runtime, merger, "crm_clients_merge", {"survivor_id": world.ids["client_id"],
                                                           "duplicate_ids": world.ids["duplicate_ids"]})
    assert e.value.message.startswith("missing permissions deals:write (crm_clients_merge changes deals), "
                                      "activities:write (crm_clients_merge changes activities)")
    assert call(world.runtime, merger, "crm_clients_get", {"client_id": world.ids["duplicate_ids"][0]})  # nothing merged


def test_the_timeline_leaves_out_what_the_token_may_not_read_and_says_so(world, database_url):
    args = {"client_id": world.ids["client_id"]}
    everything = call(world.runtime, world.org.principal(database_url), "crm_activities_timeline", args)
    assert {e["kind"] for e in everything["items"]} >= {"activity", "note", "deal_created", "deal_status", "deal_stage"}
    assert everything.get("omitted", []) == []
    reader = token_principal(world, database_url, {"activities": "r", "clients": "r"})
    partial = call(world.runtime, reader, "crm_activities_timeline", args)
    assert {(e["kind"], e.get("deal_id") is None) for e in partial["items"]} == {
        ("activity", False), ("note", True), ("client_created", True)}
    assert partial["omitted"] == ["deal entries and notes on deals (needs deals:read)", "tasks (needs tasks:read)",
                                  "stage names (needs pipelines:read)"]
    assert markers(json.dumps(partial)) == {"activities", "clients"}
