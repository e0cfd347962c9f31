"""'Everything about ACME' in two calls: a search, then crm_clients_overview, each part only where the token may read."""

from __future__ import annotations

import pytest

from application import identity
from application.toolsets.client_overview import distinctive_name
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def test_a_company_is_mentioned_without_its_legal_form():
    assert distinctive_name("ACME Logistics SpA") == "ACME Logistics"
    assert distinctive_name("Rossi & Figli S.r.l.") == "Rossi Figli"
    assert distinctive_name("Beta Ltd.") == "Beta"
    assert distinctive_name("S.p.A.") == "S.p.A."  # nothing else left: the name as it is


async def test_everything_about_a_client_in_one_call(server, make_org, db):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token) as client:
        me = await call(client, "crm_users_me")
        acme = await call(client, "crm_clients_create_lead", {"business_name": "ACME Logistics SpA"})
        other = await call(client, "crm_clients_create_lead", {"business_name": "Other Srl"})
        won = await call(client, "crm_deals_create", {"title": "Magazzino 2025", "client_id": acme["id"], "value": "900"})
        await call(client, "crm_deals_set_status", {"deal_id": won["id"], "status": "accepted"})
        open_deal = await call(client, "crm_deals_create", {"title": "Magazzino 2026", "client_id": acme["id"],
                                                            "value": "1200"})
        await call(client, "crm_deals_create", {"title": "Not theirs", "client_id": other["id"]})
        soon = await call(client, "crm_tasks_create", {"title": "Send the offer", "client_id": acme["id"],
                                                       "due_date": "2030-01-02", "assignee_id": me["user"]["id"]})
        done = await call(client, "crm_tasks_create", {"title": "First call", "client_id": acme["id"]})
        await call(client, "crm_tasks_complete", {"task_id": done["id"]})
        logged = await call(client, "crm_activities_log_call", {"client_id": acme["id"], "outcome": "interested"})
        note = await call(client, "crm_clients_add_note", {"client_id": acme["id"], "body": "Prefers e-mail"})
        page = await call(client, "crm_wiki_create_page", {
            "title": "Clienti chiave", "body": "Con ACME Logistics il contratto quadro scade a marzo."})
        await call(client, "crm_wiki_create_page", {"title": "Ferie", "body": "Nessun cliente qui."})

        found = await call(client, "crm_clients_search", {"q": "ACME Srl"})
        overview = await call(client, "crm_clients_overview", {"client_id": found["items"][0]["id"]})

        assert overview["client"]["id"] == acme["id"] and overview["client"]["deals_count"] == 2
        assert [d["id"] for d in overview["deals"]] == [open_deal["id"], won["id"]]  # open first
        assert overview["deals"][0]["value"]["amount"] == "1200.00"
        assert [t["id"] for t in overview["open_tasks"]] == [soon["id"]]
        assert overview["open_tasks"][0]["assignee_name"] == me["user"]["name"]
        assert [a["id"] for a in overview["activities"]] == [logged["id"]]
        assert overview["activities"][0]["user_name"] == me["user"]["name"]
        assert [n["id"] for n in overview["notes"]] == [note["id"]] and overview["notes"][0]["author_name"] == me["user"]["name"]
        assert [p["id"] for p in overview["wiki_pages"]] == [page["id"]]
        assert "**" in overview["wiki_pages"][0]["snippet"]
        assert "omitted" not in overview

        small = await call(client, "crm_clients_overview", {"client_id": acme["id"], "limit": 1})
        assert [d["id"] for d in small["deals"]] == [open_deal["id"]]

        err = await call_error(client, "crm_clients_overview", {"client_id": open_deal["id"]})
        assert "is a deal id, not a client id" in err["message"]

    token, _ = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r"})
    async with mcp_client(server.mcp_url, token) as client:
        narrow = await call(client, "crm_clients_overview", {"client_id": acme["id"]})
    assert narrow["client"]["id"] == acme["id"] and [n["id"] for n in narrow["notes"]] == [note["id"]]
    assert not {"deals", "open_tasks", "activities", "wiki_pages"} & narrow.keys()
    assert narrow["omitted"] == ["deals (needs deals:read)", "tasks (needs tasks:read)",
                                 "activities (needs activities:read)", "wiki (needs wiki:read)"]
    assert "Magazzino" not in str(narrow) and "contratto" not in str(narrow)

    stranger = make_org()
    async with mcp_client(server.mcp_url, stranger.token) as client:
        err = await call_error(client, "crm_clients_overview", {"client_id": acme["id"]})
    assert err["code"] == "not_found"
