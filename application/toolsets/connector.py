"""`search` and `fetch`: the two tools of ChatGPT's connector contract (deep research, company knowledge), over the
whole CRM. Named by that contract, not crm_*, and listed in every connection (Toolset.always).

`search` asks each kind of entity the caller may read (clients and leads, contact persons, deals, projects, tasks,
wiki pages, activities, notes) with the same matching as its own search tool (typos, accents, any-word
fallback), and merges them best first. `fetch` renders one result as readable text by running the entity's own
read tools for the caller, so their permissions, tenancy checks and logs apply unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta, Struct, to_builtins

from application.errors import InvalidArguments, PermissionDenied
from application.money import money
from application.public import public_base
from application.runner import QueryContext
from application.shapes import Query
from application.toolset import Toolset
from domain.errors import NotFound
from projections import activities as activities_q
from projections import clients as clients_q
from projections import connector as connector_q
from projections import deals as deals_q
from projections import tasks as tasks_q
from projections import wiki as wiki_q
from projections.matching import Found

MAX_RESULTS = 20
KINDS = {"client": "clients", "contact": "clients", "deal": "deals", "project": "projects", "task": "tasks",
         "wiki": "wiki", "activity": "activities", "note": None}
"""Result kinds in the order they win ties, with the resource a caller must read to see them (a note's depends
on what it is about)."""
NOTE_SUBJECTS = {"client": "clients", "deal": "deals"}
ID_PATTERN = re.compile(r"^(" + "|".join(KINDS) + r"):([0-9a-fA-F-]{36})$")

connector = Toolset(
    "connector", title="Connector (search, fetch)",
    description="ChatGPT's connector contract: search the whole CRM by one query, fetch a result as readable text",
    meta=True, always=True,
)


class Result(Struct, kw_only=True):
    id: str
    title: str
    url: str


class SearchResults(Struct, kw_only=True):
    results: list[Result]


class Document(Struct, kw_only=True):
    id: str
    title: str
    text: str
    url: str
    metadata: dict[str, Any]


class SearchEverything(Query, kw_only=True):
    """Search the whole CRM with one query: leads/clients, contacts, deals, projects, tasks, wiki pages, activities and
    notes you may read; typo-tolerant, best first, at most 20. Each result's id (e.g. 'deal:<uuid>') goes to fetch."""

    query: Annotated[str, Meta(min_length=1, max_length=200)]


class FetchOne(Query, kw_only=True):
    """One search result in full by its id (e.g. 'client:<uuid>'): title, readable text (a client with contacts, open
    deals and tasks, recent activities and notes; a deal with value, stage, lines and notes; a wiki page), url and
    metadata."""

    id: Annotated[str, Meta(max_length=100)]


def url_of(kind: str, entity_id: Any) -> str:
    """The citation link: resolves, for a request carrying an authorised token, to what fetch answers (see the
    README's connector section)."""
    return f"{public_base()}/crm/{kind}/{entity_id}"


# -- search ------------------------------------------------------------------------------------------------
def _money(cents: int | None, currency: str | None) -> str:
    return money(cents, currency or "EUR").formatted


def _snippet(text: str | None, size: int = 60) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= size else words[: size - 1].rsplit(" ", 1)[0] + "…"


def _titles(can_read: Callable[[str], bool]) -> dict[str, Callable[[dict[str, Any]], str]]:
    """How each kind of row reads as a result title; a name from another resource only where it may be read."""
    def client_of(row: dict[str, Any]) -> str:
        return f", {row['client_name']}" if row.get("client_name") and can_read("clients") else ""

    return {
        "client": lambda r: f"{r['business_name']} — {r['kind']}" + (f", {r['status']}" if r["kind"] == "lead" else ""),
        "contact": lambda r: f"{r['name']} — contact" + (f" ({r['role']})" if r.get("role") else "")
                             + f" at {r['client_name']}",
        "deal": lambda r: f"{r['title']} — deal{client_of(r)}, {_money(r['value_cents'], r['currency'])}, {r['status']}",
        "project": lambda r: f"{r['name']} — project{client_of(r)}, {r['status']}" + (", archived" if r["archived"] else ""),
        "task": lambda r: f"{r['title']} — task, {r['status']}" + (f", due {r['due_date']}" if r.get("due_date") else "")
                          + client_of(r),
        "wiki": lambda r: f"{r['title']} — wiki page",
        "activity": lambda r: f"{r['subject'] or _snippet(r['body'])} — {r['type']}, {r['occurred_at']:%Y-%m-%d}"
                              + client_of(r),
        "note": lambda r: f"Note on {r['subject_name'] or r['subject_type']}: {_snippet(r['body'])}",
    }


def _find(ctx: QueryContext, text: str) -> list[tuple[str, Found]]:
    """Each readable kind's matches, at most MAX_RESULTS each."""
    can = ctx.principal.can
    org, conn, n = ctx.org_id, ctx.conn, MAX_RESULTS
    finders: dict[str, Callable[[], Found]] = {
        "client": lambda: clients_q.search_clients(conn, org, text, limit=n),
        "contact": lambda: connector_q.search_contacts(conn, org, text, n),
        "deal": lambda: deals_q.search_deals(conn, org, text, n),
        "project": lambda: connector_q.search_projects(conn, org, text, n),
        "task": lambda: tasks_q.search_tasks(conn, org, text, limit=n),
        "wiki": lambda: wiki_q.search_pages(conn, org, text, language=_language(ctx), limit=n),
        "activity": lambda: connector_q.search_activities(conn, org, text, n),
        "note": lambda: connector_q.search_notes(
            conn, org, text, [s for s, resource in NOTE_SUBJECTS.items() if can(resource, "read")], n),
    }
    return [(kind, finders[kind]()) for kind, resource in KINDS.items() if resource is None or can(resource, "read")]


def _language(ctx: QueryContext) -> str:
    from application.toolsets.wiki import organization_language

    return organization_language(ctx.conn, ctx.org_id)


def search_everything(ctx: QueryContext, text: str) -> SearchResults:
    """Merged best first: results matching every word before those matching some; within that, each kind's
    scores relative to its own best (scales differ between kinds), ties going to the kinds listed first."""
    titles = _titles(lambda resource: ctx.principal.can(resource, "read"))
    ranked = []
    for priority, (kind, found) in enumerate(_find(ctx, text)):
        best = max((row["score"] or 0 for row in found.rows), default=0) or 1
        for position, row in enumerate(found.rows):
            ranked.append(((found.match == "all", (row["score"] or 0) / best, -priority, -position), kind, row))
    ranked.sort(key=lambda item: item[0], reverse=True)
    return SearchResults(results=[Result(id=f"{kind}:{row['id']}", title=titles[kind](row), url=url_of(kind, row["id"]))
                                  for _, kind, row in ranked[:MAX_RESULTS]])


@connector.registry.query("search", input=SearchEverything, output=SearchResults, group="connector")
async def search(q: SearchEverything, runner: Any, principal: Any) -> dict[str, Any]:
    return to_builtins(await runner.read(principal, lambda ctx: search_everything(ctx, q.query)))


# -- fetch -------------------------------------------------------------------------------------------------
def parse_id(value: str) -> tuple[str, UUID]:
    match = ID_PATTERN.match(value.strip())
    if match is None:
        raise InvalidArguments(f"`id` must be a search result's id: <kind>:<uuid> with kind one of {', '.join(KINDS)}"
                               " (e.g. 'client:3f1c…'); call search first", field="id")
    return match.group(1), UUID(match.group(2))


QUIET = {"created_by", "updated_by", "author_id", "user_id", "owner_id", "assigned_to", "assignee_id",
         "subject_type", "subject_id"}
"""Ids of people and of the entity a part belongs to: the names beside them say it (metadata keeps the ids)."""


def _lines(value: Any, indent: str = "") -> list[str]:
    """A tool's JSON answer as readable lines: labels from field names, money as people write it, lists as
    bullets; entity ids are kept (the next tool call needs them)."""
    if isinstance(value, dict):
        if {"formatted", "amount", "currency"} <= value.keys():
            return [f"{indent}{value['formatted']}"]
        out = []
        for key, item in value.items():
            if key in QUIET:
                continue
            label = key.replace("_", " ")
            if isinstance(item, dict) and {"formatted", "amount"} <= item.keys():
                out.append(f"{indent}{label}: {item['formatted']}")
            elif isinstance(item, (dict, list)):
                if item:
                    out.append(f"{indent}{label}:")
                    out += _lines(item, indent + "  ")
            elif item not in (None, ""):
                text = str(item)
                out.append(f"{indent}{label}:" + (f"\n{text}" if "\n" in text else f" {text}"))
        return out
    if isinstance(value, list):
        out = []
        for item in value:
            rendered = _lines(item, indent + "  ")
            if rendered:
                out.append(f"{indent}- {rendered[0].strip()}")
                out += rendered[1:]
        return out
    return [f"{indent}{value}"]


async def _document(runner: Any, principal: Any, kind: str, entity_id: UUID) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(title, parts to render, metadata) of one entity, read with the entity's own tools for this caller."""
    call = runner.call
    if kind == "client":
        overview = await call(principal, "crm_clients_overview", {"client_id": str(entity_id), "limit": 10})
        client = overview.pop("client")
        title = f"{client['business_name']} — {client['kind']}"
        meta = {k: client.get(k) for k in ("kind", "status", "assigned_to", "created_at", "updated_at")}
        return title, {**client, **overview}, meta
    if kind == "contact":
        client_id = await runner.read(principal, lambda ctx: _contact_client(ctx, entity_id))
        contacts = await call(principal, "crm_clients_list_contacts", {"client_id": str(client_id)})
        contact = next(c for c in contacts["items"] if c["id"] == str(entity_id))
        client = await call(principal, "crm_clients_get", {"client_id": str(client_id)})
        return (f"{contact['name']} — contact at {client['business_name']}",
                {**contact, "client": client["business_name"], "client_id": str(client_id)},
                {"client_id": str(client_id)})
    if kind == "deal":
        deal = await call(principal, "crm_deals_get", {"deal_id": str(entity_id)})
        notes = await call(principal, "crm_deals_list_notes", {"deal_id": str(entity_id), "limit": 20})
        title = f"{deal['title']} — deal"
        meta = {k: deal.get(k) for k in ("status", "client_id", "pipeline_id", "stage_id", "owner_id", "close_date",
                                          "expected_close_date", "created_at", "updated_at")}
        meta["value"] = deal["value"]["amount"]
        meta["currency"] = deal["value"]["currency"]
        return title, {**deal, "notes": notes["items"]}, meta
    if kind == "task":
        task = await call(principal, "crm_tasks_get", {"task_id": str(entity_id)})
        meta = {k: task.get(k) for k in ("status", "priority", "due_date", "client_id", "deal_id", "project_id",
                                          "assignee_id", "created_at", "updated_at")}
        return f"{task['title']} — task", task, meta
    if kind == "project":
        project = await call(principal, "crm_projects_get", {"project_id": str(entity_id)})
        meta = {k: project.get(k) for k in ("status", "archived", "client_id", "deal_id", "start_date", "end_date",
                                             "created_at", "updated_at")}
        return f"{project['name']} — project", project, meta
    if kind == "wiki":
        page = await call(principal, "crm_wiki_get_page", {"page_id": str(entity_id)})
        meta = {k: page.get(k) for k in ("category_id", "parent_id", "revision", "created_at", "updated_at")}
        return f"{page['title']} — wiki page", {"title": page["title"], "category": page.get("category_name"),
                                                 "body": page["body"]}, meta
    if kind == "activity":
        activity = await call(principal, "crm_activities_get", {"activity_id": str(entity_id)})
        meta = {"activity_type": activity["type"],
                **{k: activity.get(k) for k in ("client_id", "deal_id", "user_id", "occurred_at", "created_at")}}
        return f"{activity.get('subject') or activity['type']} — {activity['type']}", activity, meta
    note = await runner.read(principal, lambda ctx: _note(ctx, entity_id))
    meta = {k: note[k] for k in ("subject_type", "subject_id", "author_id", "created_at", "updated_at")}
    return f"Note on {note['subject_name'] or note['subject_type']}", note, meta


def _contact_client(ctx: QueryContext, contact_id: UUID) -> UUID:
    row = ctx.conn.execute("SELECT client_id FROM client_contacts WHERE organization_id = %s AND id = %s",
                           (ctx.org_id, contact_id)).fetchone()
    if row is None:
        raise NotFound("contact", contact_id, field="id")
    return row["client_id"]


def _note(ctx: QueryContext, note_id: UUID) -> dict[str, Any]:
    """A note, only for a caller who may read what it is about (a client's notes are client data)."""
    from projections import notes as notes_q

    note = notes_q.get_note(ctx.conn, ctx.org_id, note_id)
    resource = NOTE_SUBJECTS.get(note["subject_type"])
    if resource is None or not ctx.principal.can(resource, "read"):
        raise PermissionDenied(f"missing permission {resource or note['subject_type']}:read (fetch shows notes on "
                               f"{note['subject_type']}s): the token or the user's role does not grant it")
    names = {"client": "SELECT business_name AS name FROM clients WHERE id = %s",
             "deal": "SELECT title AS name FROM deals WHERE id = %s"}
    subject = ctx.conn.execute(names[note["subject_type"]], (note["subject_id"],)).fetchone()
    return {"subject_type": note["subject_type"], "subject_id": note["subject_id"],
            "subject_name": subject["name"] if subject else None, "body": note["body"],
            "author_id": note["author_id"], "author_name": note.get("author_name"),
            "created_at": note["created_at"], "updated_at": note["updated_at"]}


@connector.registry.query("fetch", input=FetchOne, output=Document, group="connector")
async def fetch(q: FetchOne, runner: Any, principal: Any) -> dict[str, Any]:
    kind, entity_id = parse_id(q.id)
    title, parts, metadata = await _document(runner, principal, kind, entity_id)
    parts = to_builtins(parts)
    text = "\n".join([title, *_lines(parts)])
    metadata = {**{k: v for k, v in to_builtins(metadata).items() if v is not None}, "type": kind, "id": str(entity_id)}
    return to_builtins(Document(id=f"{kind}:{entity_id}", title=title, text=text, url=url_of(kind, entity_id),
                                metadata=metadata))
