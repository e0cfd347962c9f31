"""The seed's onboarding use case over HTTP with the `mcp` SDK client: a lead, a deal, a project for it, tasks
with a checklist and an attachment, then the reads that show it all linked."""

from __future__ import annotations

import base64
import datetime as dt

import httpx
import pytest

from tests.mcp_helpers import all_tools, call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BRIEF = "Obiettivo: sito nuovo entro marzo.\n".encode()


async def test_onboarding_a_new_client(server, make_org, db):
    org = make_org("Onboarding")
    from application import identity

    anna = identity.create_user(db, org.organization_id, "anna.verdi@example.com", "Anna Verdi", "sales")
    async with mcp_client(server.mcp_url, org.token) as client:
        tools = {t.name: t for t in await all_tools(client)}
        assert tools["crm_projects_archive"].annotations.destructive_hint is True
        assert tools["crm_tasks_create"].annotations.destructive_hint is False
        assert tools["crm_wiki_search"].annotations.read_only_hint is True

        lead = await call(client, "crm_clients_create_lead", {"business_name": "Studio Dentistico Bianchi",
                                                              "contact_name": "Luca Bianchi"})
        deal_id = None
        if "crm_deals_create" in tools:  # the sales issue's deals; the rest of the flow works without them
            deal = await call(client, "crm_deals_create", {"title": "Sito web e gestionale", "client_id": lead["id"],
                                                           "value": "12000"})
            deal_id = deal["id"]
        start = dt.date.today()
        project = await call(client, "crm_projects_create", {
            "name": "Onboarding Studio Bianchi", "client_id": lead["id"], "deal_id": deal_id,
            "start_date": start.isoformat(), "end_date": (start + dt.timedelta(days=60)).isoformat(),
            "budget_cents": 1_200_000, "currency": "EUR",
        })
        await call(client, "crm_projects_update_brief", {
            "project_id": project["id"], "goals": ["Nuovo sito", "Prenotazioni online"], "scope": "Sito di 5 pagine",
            "deliverables": ["Sito", "Formazione"], "constraints": ["Budget 12.000 EUR", "Online entro marzo"],
        })
        await call(client, "crm_projects_assign_user", {"project_id": project["id"], "user_id": str(anna), "role": "member"})

        kickoff = await call(client, "crm_tasks_create", {
            "title": "Kickoff con Luca Bianchi", "project_id": project["id"], "client_id": lead["id"], "deal_id": deal_id,
            "assignee_id": str(anna), "due_date": (start + dt.timedelta(days=2)).isoformat(), "priority": "high",
            "checklist": ["Preparare agenda", "Inviare invito"], "tags": ["onboarding"],
        })
        extra = await call(client, "crm_tasks_add_checklist_item", {"task_id": kickoff["id"], "text": "Raccogliere accessi"})
        ticked = await call(client, "crm_tasks_update_checklist_item", {"task_id": kickoff["id"],
                                                                        "item_id": kickoff["checklist"][0]["id"], "done": True})
        assert ticked["done"] is True
        attachment = await call(client, "crm_tasks_add_attachment", {
            "task_id": kickoff["id"], "name": "brief.txt", "mime_type": "text/plain", "size_bytes": len(BRIEF),
            "content_base64": base64.b64encode(BRIEF).decode(),
        })
        wrong = await call_error(client, "crm_tasks_add_attachment", {
            "task_id": kickoff["id"], "name": "brief.pdf", "mime_type": "application/pdf",
            "content_base64": base64.b64encode(BRIEF).decode(),
        })
        assert wrong["field"] == "mime_type"
        await call(client, "crm_tasks_create", {"title": "Raccolta contenuti", "project_id": project["id"],
                                                "client_id": lead["id"], "tags": ["onboarding"]})

        # the reads show it all linked
        got = await call(client, "crm_projects_get", {"project_id": project["id"]})
        assert got["client_id"] == lead["id"] and got["deal_id"] == deal_id
        assert got["tasks_count"] == 2 and got["open_tasks_count"] == 2
        assert {m["user_id"]: m["role"] for m in got["members"]}[str(anna)] == "member"
        assert "goals: Nuovo sito; Prenotazioni online" in got["brief_summary"]
        project_tasks = await call(client, "crm_projects_list_tasks", {"project_id": project["id"]})
        assert [t["id"] for t in project_tasks["items"]][0] == kickoff["id"] and len(project_tasks["items"]) == 2
        task = await call(client, "crm_tasks_get", {"task_id": kickoff["id"]})
        assert [(i["text"], i["done"]) for i in task["checklist"]] == [
            ("Preparare agenda", True), ("Inviare invito", False), ("Raccogliere accessi", False)]
        assert task["checklist"][2]["id"] == extra["id"]
        assert task["checklist_done"] == 1 and task["checklist_total"] == 3
        assert [a["id"] for a in task["attachments"]] == [attachment["id"]]
        download = httpx.get(server.base_url + task["attachments"][0]["download_url"])
        assert download.status_code == 200 and download.content == BRIEF
        assert task["project_id"] == project["id"] and task["client_id"] == lead["id"] and task["deal_id"] == deal_id
        client_view = await call(client, "crm_clients_get", {"client_id": lead["id"]})
        assert client_view["tasks_count"] == 2 and client_view["open_tasks_count"] == 2
        if deal_id is not None:
            by_deal = await call(client, "crm_tasks_list", {"deal_id": deal_id})
            assert [t["id"] for t in by_deal["items"]] == [kickoff["id"]]
        for_client = await call(client, "crm_projects_list", {"client_id": lead["id"]})
        assert [p["id"] for p in for_client["items"]] == [project["id"]]
        mine = await call(client, "crm_projects_list", {"member_id": str(anna)})
        assert [p["id"] for p in mine["items"]] == [project["id"]]
        tags = await call(client, "crm_tasks_list_tags")
        assert tags["items"] == [{"tag": "onboarding", "count": 2}]
        log = await call(client, "crm_projects_list_activities", {"project_id": project["id"]})
        assert any("brief updated" in a["text"] for a in log["items"])
