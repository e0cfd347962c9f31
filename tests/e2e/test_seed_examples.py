"""The seed's usage examples, driven through the real server by the `mcp` SDK client over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_example_1_create_lead_assign_and_follow_up_task(server, make_org, db):
    org = make_org("Example1")
    from application import identity

    mario = identity.create_user(db, org.organization_id, "mario.rossi@example.com", "Mario Rossi", "sales")
    identity.create_user(db, org.organization_id, "maria.russo@example.com", "Maria Russo", "sales")
    async with mcp_client(server.mcp_url, org.token) as client:
        users = await call(client, "crm_users_list", {"q": "Mario Rossi"})
        assert users["items"][0]["id"] == str(mario)
        lead = await call(client, "crm_clients_create_lead", {
            "business_name": "Studio Dentistico Bianchi", "vat_number": "12345678901",
            "address": {"street": "Via Roma 10", "city": "Milano"}, "assigned_to": users["items"][0]["id"],
        })
        assert lead["kind"] == "lead" and lead["status"] == "new" and lead["assigned_to_name"] == "Mario Rossi"
        tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
        task = await call(client, "crm_tasks_create", {
            "title": "Call Studio Dentistico Bianchi", "client_id": lead["id"], "due_date": tomorrow,
            "assignee_id": str(mario),
        })
        assert task["client_id"] == lead["id"] and task["due_date"] == tomorrow
        # read-your-writes: the very next reads see both
        got = await call(client, "crm_clients_get", {"client_id": lead["id"]})
        assert got["tasks_count"] == 1 and got["address"] == {"street": "Via Roma 10", "city": "Milano"}
        tasks = await call(client, "crm_tasks_list", {"client_id": lead["id"]})
        assert [t["id"] for t in tasks["items"]] == [task["id"]]


async def test_example_3_delete_duplicate_leads_by_vat(server, make_org):
    org = make_org("Example3")
    async with mcp_client(server.mcp_url, org.token) as client:
        ids = []
        for vat in ("IT 01234567890", "01234567890", "01234567890"):
            lead = await call(client, "crm_clients_create_lead", {"business_name": "Mario Rossi", "vat_number": vat})
            ids.append(lead["id"])
        other = await call(client, "crm_clients_create_lead", {"business_name": "Mario Rossi Impianti", "vat_number": "99999999999"})
        found = await call(client, "crm_clients_search", {"q": "Mario Rossi"})
        candidates = [c for c in found["items"]]
        assert {c["id"] for c in candidates} >= set(ids) | {other["id"]}
        by_vat: dict[str, list[dict]] = {}
        for c in candidates:
            key = "".join(ch for ch in c["vat_number"] if ch.isdigit())
            by_vat.setdefault(key, []).append(c)
        duplicates = sorted(by_vat["01234567890"], key=lambda c: c["created_at"])[1:]
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["crm_clients_delete"].annotations.destructive_hint is True
        for dup in duplicates:
            removed = await call(client, "crm_clients_delete", {"client_id": dup["id"]})
            assert removed == {"id": dup["id"], "entity": "client", "removed": True}
        after = await call(client, "crm_clients_search", {"q": "Mario Rossi"})
        assert {c["id"] for c in after["items"]} == {ids[0], other["id"]}
        groups = await call(client, "crm_clients_find_duplicates", {"by": "vat"})
        assert groups["groups"] == []
