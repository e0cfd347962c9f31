"""ChatGPT's connector contract through the real server and the mcp SDK client: `search` and `fetch`."""

from __future__ import annotations

import json

import httpx
import pytest

from application import identity
from tests.mcp_helpers import all_tools, call_error, mcp_client, call

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def contract(client, name: str, arguments: dict) -> dict:
    """The exact shape ChatGPT reads: one text item whose text is the JSON, and the same as structuredContent."""
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content
    assert len(result.content) == 1 and result.content[0].type == "text"
    body = json.loads(result.content[0].text)
    assert body == result.structured_content
    return body


@pytest.fixture
async def acme(server, make_org):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token) as client:
        lead = await call(client, "crm_clients_create_lead", {"business_name": "ACME Logistics SpA"})
        added = await call(client, "crm_clients_add_contact", {"client_id": lead["id"], "name": "Mario Bianchi",
                                                               "role": "CFO", "email": "mario@acme.example"})
        contact = added
        deal = await call(client, "crm_deals_create", {"title": "Website redesign", "client_id": lead["id"],
                                                       "value": "4800"})
        await call(client, "crm_deals_add_note", {"deal_id": deal["id"], "body": "Offerta inviata, attendiamo ACME"})
        task = await call(client, "crm_tasks_create", {"title": "Call ACME about the offer", "client_id": lead["id"],
                                                       "due_date": "2030-01-10"})
        project = await call(client, "crm_projects_create", {"name": "ACME rollout", "client_id": lead["id"]})
        page = await call(client, "crm_wiki_create_page", {"title": "Clienti chiave",
                                                           "body": "ACME Logistics: contratto quadro fino a marzo."})
        activity = await call(client, "crm_activities_log_call", {"client_id": lead["id"], "subject": "ACME follow-up"})
        note = await call(client, "crm_clients_add_note", {"client_id": lead["id"], "body": "ACME prefers e-mail"})
    ids = {"client": lead["id"], "contact": contact["id"], "deal": deal["id"], "task": task["id"],
           "project": project["id"], "wiki": page["id"], "activity": activity["id"], "note": note["id"]}
    return org, ids


async def test_search_and_fetch_are_in_every_connection_but_discovery(server, make_org):
    org = make_org()
    for query in ("", "toolsets=clients", "readonly=1", "toolsets=sales&readonly=1"):
        async with mcp_client(server.mcp_url, org.token, query=query) as client:
            tools = {t.name: t for t in await all_tools(client)}
        assert {"search", "fetch"} <= tools.keys(), query
        assert tools["search"].annotations.read_only_hint and tools["fetch"].annotations.read_only_hint
        assert set(tools["search"].input_schema["properties"]) == {"query"}
        assert set(tools["fetch"].input_schema["properties"]) == {"id"}
    async with mcp_client(server.mcp_url, org.token, query="toolsets=discover") as client:
        assert {t.name for t in await all_tools(client)} == {
            "crm_tools_search", "crm_tools_call_read", "crm_tools_call_write", "crm_tools_call_destructive"}
        found = await call(client, "crm_tools_search", {"q": "search the whole CRM"})
        assert "search" in {t["name"] for t in found["items"]}  # reachable through crm_tools_call_read


async def test_search_finds_every_kind_and_fetch_renders_each(server, acme):
    org, ids = acme
    async with mcp_client(server.mcp_url, org.token) as client:
        body = await contract(client, "search", {"query": "ACME"})
        results = body["results"]
        assert 0 < len(results) <= 20 and all(set(r) == {"id", "title", "url"} for r in results)
        assert results[0]["id"] == f"client:{ids['client']}" and results[0]["title"] == "ACME Logistics SpA — lead, new"
        kinds = {r["id"].split(":")[0] for r in results}
        assert kinds >= {"client", "deal", "task", "project", "wiki", "activity", "note"}, kinds
        deal = next(r for r in results if r["id"] == f"deal:{ids['deal']}")
        assert deal["title"] == "Website redesign — deal, ACME Logistics SpA, €4,800.00, open"
        assert deal["url"] == f"{server.base_url}/crm/deal/{ids['deal']}"

        typo = await contract(client, "search", {"query": "Mario Bianci"})  # a typo, a contact person
        assert f"contact:{ids['contact']}" in [r["id"] for r in typo["results"]]
        some = await contract(client, "search", {"query": "ACME Srl"})  # no entity has both words
        assert some["results"][0]["id"] == f"client:{ids['client']}"

        expected = {
            "client": ["ACME Logistics SpA — lead", "Mario Bianchi", "Website redesign", "Call ACME about the offer",
                       "ACME follow-up", "ACME prefers e-mail", "Clienti chiave"],
            "contact": ["Mario Bianchi — contact at ACME Logistics SpA", "CFO", "mario@acme.example"],
            "deal": ["Website redesign — deal", "€4,800.00", "open", "Offerta inviata, attendiamo ACME"],
            "task": ["Call ACME about the offer — task", "2030-01-10"],
            "project": ["ACME rollout — project", "active"],
            "wiki": ["Clienti chiave — wiki page", "contratto quadro fino a marzo"],
            "activity": ["ACME follow-up — call"],
            "note": ["Note on ACME Logistics SpA", "ACME prefers e-mail"],
        }
        for kind, needles in expected.items():
            doc = await contract(client, "fetch", {"id": f"{kind}:{ids[kind]}"})
            assert set(doc) == {"id", "title", "text", "url", "metadata"}
            assert doc["id"] == f"{kind}:{ids[kind]}" and doc["metadata"]["type"] == kind
            assert doc["metadata"]["id"] == ids[kind] and doc["url"].endswith(f"/crm/{kind}/{ids[kind]}")
            for needle in needles:
                assert needle in doc["text"], (kind, needle, doc["text"])

        err = await call_error(client, "fetch", {"id": "nonsense"})
        assert err["field"] == "id" and "client" in err["message"] and "search" in err["message"]

    # The citation url resolves for an authorised token, to what fetch answers; without one, the OAuth challenge.
    async with httpx.AsyncClient() as http:
        url = f"{server.base_url}/crm/deal/{ids['deal']}"
        ok = await http.get(url, headers={"Authorization": f"Bearer {org.token}"})
        assert ok.status_code == 200 and ok.json()["title"] == "Website redesign — deal"
        anonymous = await http.get(url)
        assert anonymous.status_code == 401 and "resource_metadata=" in anonymous.headers["www-authenticate"]


async def test_a_clients_token_never_sees_deals_and_another_organization_sees_nothing(server, acme, db, make_org):
    org, ids = acme
    token, _ = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r"})
    async with mcp_client(server.mcp_url, token) as client:
        body = await contract(client, "search", {"query": "ACME"})
        kinds = {r["id"].split(":")[0] for r in body["results"]}
        assert kinds <= {"client", "contact", "note"} and "client" in kinds
        assert "Website redesign" not in json.dumps(body) and "Offerta" not in json.dumps(body)
        doc = await contract(client, "fetch", {"id": f"client:{ids['client']}"})
        assert "Website redesign" not in doc["text"] and "Call ACME" not in doc["text"] and "ACME follow-up" not in doc["text"]
        assert "ACME prefers e-mail" in doc["text"] and "deals (needs deals:read)" in doc["text"]
        err = await call_error(client, "fetch", {"id": f"deal:{ids['deal']}"})
        assert err["code"] == "permission_denied" and "deals:read" in err["message"]

    stranger = make_org()
    async with mcp_client(server.mcp_url, stranger.token) as client:
        assert (await contract(client, "search", {"query": "ACME"}))["results"] == []
        for kind, entity_id in ids.items():
            err = await call_error(client, "fetch", {"id": f"{kind}:{entity_id}"})
            assert err["code"] == "not_found", (kind, err)
            assert "ACME" not in err["message"]
