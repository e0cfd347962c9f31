"""`crm_clients_overview`: everything about one client in one call (its deals, open tasks, latest activities, notes
and the wiki pages that mention it), so "tell me about ACME" is a search and an overview rather than a dozen calls.

Each part is another resource's data: it is there only when the token may read that resource, and `omitted` says
what was left out and which permission would show it (as the timeline does).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application.organization import org_today
from application.runner import QueryContext
from application.shapes import Query
from application.toolset import NoteOut
from application.toolsets.activities import ActivityOut
from application.toolsets.clients import ClientDetail, ClientId, clients, present_client
from application.toolsets.deals import DealRow, deal_page
from application.toolsets.tasks import TaskRow
from application.toolsets.wiki import organization_language
from projections import activities as activities_q
from projections import notes as notes_q
from projections import tasks as tasks_q
from projections import wiki as wiki_q

LEGAL_FORMS = re.compile(
    r"(?<!\w)(s\.?\s?r\.?\s?l\.?s?|s\.?\s?p\.?\s?a\.?|s\.?\s?n\.?\s?c\.?|s\.?\s?a\.?\s?s\.?|s\.?\s?c\.?\s?a\.?\s?r\.?\s?l\.?"
    r"|ltd\.?|llc|inc\.?|gmbh|co\.?|corp\.?|plc|s\.?a\.?|s\.?l\.?|b\.?v\.?|ag|&)(?!\w)",
    re.IGNORECASE)
"""Legal forms a page would not repeat when it mentions a company ('ACME Logistics SpA' is 'ACME Logistics')."""


def distinctive_name(business_name: str) -> str:
    """The name as people write it in prose: without its legal form, or the whole name if nothing else is left."""
    stripped = " ".join(LEGAL_FORMS.sub(" ", business_name).split()).strip(" ,.-")
    return stripped or business_name


class WikiMention(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    title: str
    snippet: str
    updated_at: datetime


class ClientOverview(Struct, kw_only=True, omit_defaults=True):
    client: ClientDetail
    deals: list[DealRow] = []
    open_tasks: list[TaskRow] = []
    activities: list[ActivityOut] = []
    notes: list[NoteOut] = []
    wiki_pages: list[WikiMention] = []
    omitted: list[str] = []


class ClientOverviewQuery(Query, kw_only=True):
    """Everything about one lead/client (id from crm_clients_search) in one call: details, counts, deals, open tasks,
    latest activities and notes, wiki pages mentioning it; parts the token may not read are listed in `omitted`."""

    client_id: ClientId
    limit: Annotated[int, Meta(ge=1, le=20, description="Per part.")] = 5


@clients.query("overview", input=ClientOverviewQuery, output=ClientOverview)
def client_overview(q: ClientOverviewQuery, ctx: QueryContext) -> ClientOverview:
    client = present_client(ctx, q.client_id)
    out = ClientOverview(client=client)
    may = {resource: ctx.principal.can(resource, "read") for resource in ("deals", "tasks", "activities", "wiki")}
    if may["deals"]:
        out.deals = deal_page(ctx, {"client_id": q.client_id, "status": "open"}, "updated_desc", q.limit, None).items
        if len(out.deals) < q.limit:
            closed = deal_page(ctx, {"client_id": q.client_id}, "updated_desc", q.limit, None).items
            out.deals += [d for d in closed if d.status != "open"][: q.limit - len(out.deals)]
    if may["tasks"]:
        rows, _ = tasks_q.list_tasks(ctx.conn, ctx.org_id, today=org_today(ctx.conn, ctx.org_id),
                                     client_id=q.client_id, status="open", sort="due_asc", limit=q.limit)
        out.open_tasks = [msgspec.convert(r, TaskRow) for r in rows]
    if may["activities"]:
        rows, _ = activities_q.list_activities(ctx.conn, ctx.org_id, filters={"client_id": q.client_id},
                                               limit=q.limit, cursor=None)
        out.activities = [msgspec.convert(r, ActivityOut) for r in rows]
    rows, _ = notes_q.list_notes(ctx.conn, ctx.org_id, "client", q.client_id, q.limit, None)
    out.notes = [msgspec.convert(r, NoteOut) for r in rows]
    if may["wiki"]:
        phrase = '"' + distinctive_name(client.business_name).replace('"', " ") + '"'
        found = wiki_q.search_pages(ctx.conn, ctx.org_id, phrase, language=organization_language(ctx.conn, ctx.org_id),
                                    limit=q.limit)
        out.wiki_pages = [msgspec.convert(r, WikiMention) for r in found.rows]
    out.omitted = [f"{resource} (needs {resource}:read)" for resource, ok in may.items() if not ok]
    return out
