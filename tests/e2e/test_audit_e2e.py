"""An assistant investigates "my deal disappeared" through the real server and the mcp SDK client: a salesperson
deletes a deal; the admin finds who deleted it (crm_audit_recent_changes), reads its history, restores it, and the
client's deal list shows it again."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from tests.mcp_helpers import all_tools, call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_who_deleted_my_deal_and_bring_it_back(server, make_org, database_url):
    org = make_org("Investigation")
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        seller = identity.create_user(conn, org.organization_id, f"m-{uuid.uuid4().hex[:6]}@example.com", "Marco Venditore",
                                      "admin")
        seller_token, _ = identity.create_token(conn, org.organization_id, seller, None, name="Marco's assistant")
    since = dt.datetime.now(dt.UTC).isoformat()

    async with mcp_client(server.mcp_url, seller_token) as client:
        lead = await call(client, "crm_clients_create_lead", {"business_name": "Ferri Costruzioni"})
        deal = await call(client, "crm_deals_create", {"title": "Ristrutturazione uffici", "client_id": lead["id"],
                                                       "value": "48000"})
        await call(client, "crm_deals_update", {"deal_id": deal["id"], "title": "Ristrutturazione sede"})
        await call(client, "crm_deals_delete", {"deal_id": deal["id"]})

    async with mcp_client(server.mcp_url, org.token) as admin:
        names = {t.name for t in await all_tools(admin)}
        assert {"crm_audit_entity_history", "crm_audit_entity_as_of", "crm_audit_recent_changes",
                "crm_audit_restore_entity"} <= names
        assert (await call(admin, "crm_clients_list_deals", {"client_id": lead["id"]}))["items"] == []
        err = await call_error(admin, "crm_deals_get", {"deal_id": deal["id"]})
        assert "deleted on" in err["message"] and "Marco Venditore" in err["message"]
        assert "crm_audit_restore_entity" in err["message"]

        changes = await call(admin, "crm_audit_recent_changes", {"since": since, "entity_type": "deal",
                                                                 "tool": "crm_deals_delete"})
        [deletion] = changes["items"]
        assert deletion["entity_id"] == deal["id"] and deletion["event"] == "Deleted"
        assert deletion["by"]["user_name"] == "Marco Venditore" and deletion["by"]["token_name"] == "Marco's assistant"
        assert deletion["name"] == "Ristrutturazione uffici"  # as it was created

        history = await call(admin, "crm_audit_entity_history", {"entity_id": deal["id"]})
        assert history["deleted"] is True and history["name"] == "Ristrutturazione sede"
        assert [e["event"] for e in history["items"]] == ["Created", "Updated", "Deleted"]
        assert {"field": "title", "before": "Ristrutturazione uffici", "after": "Ristrutturazione sede"} in \
            history["items"][1]["changes"]

        before = await call(admin, "crm_audit_entity_as_of", {"entity_id": deal["id"], "version": 2})
        assert before["state"]["title"] == "Ristrutturazione sede" and not before.get("deleted")

        restored = await call(admin, "crm_audit_restore_entity", {"entity_id": deal["id"]})
        assert restored["restored_to_version"] == 2 and restored["entity"]["title"] == "Ristrutturazione sede"
        deals = (await call(admin, "crm_clients_list_deals", {"client_id": lead["id"]}))["items"]
        assert [d["id"] for d in deals] == [deal["id"]]
        assert (await call(admin, "crm_deals_get", {"deal_id": deal["id"]}))["value"]["amount"] == "48000.00"
        last = (await call(admin, "crm_audit_entity_history", {"entity_id": deal["id"], "sort": "newest_first",
                                                               "limit": 1}))["items"][0]
        assert last["event"] == "Reinstated" and last["by"]["user_id"] == str(org.user_id)

    other = make_org("Elsewhere")
    async with mcp_client(server.mcp_url, other.token) as stranger:
        err = await call_error(stranger, "crm_audit_entity_history", {"entity_id": deal["id"]})
        assert err["code"] == "not_found"
        err = await call_error(stranger, "crm_audit_restore_entity", {"entity_id": deal["id"], "to_version": 1})
        assert err["code"] == "not_found"
