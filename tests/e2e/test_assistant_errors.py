"""Errors and answers an assistant can act on, through the real server and the mcp SDK client."""

from __future__ import annotations

import datetime as dt

import pytest

from application import identity
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_refusals_say_what_is_allowed_with_an_example_and_today(server, make_org):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token) as client:
        me = await call(client, "crm_users_me")
        today = me["calendar"]["today"]
        lead = await call(client, "crm_clients_create_lead", {"business_name": "ACME Srl"})
        deal = await call(client, "crm_deals_create", {"title": "Sito", "client_id": lead["id"]})

        err = await call_error(client, "crm_deals_set_status", {"deal_id": deal["id"], "status": "won"})
        assert err["field"] == "status" and "did you mean 'accepted'?" in err["message"]
        assert "open" in err["message"] and "rejected" in err["message"]

        for bad in ("tomorrow", "27/11/2026", "2026-11-27T10:00:00"):
            err = await call_error(client, "crm_tasks_create", {"title": "x", "due_date": bad})
            assert err["field"] == "due_date" and "YYYY-MM-DD" in err["message"] and today in err["message"], bad

        err = await call_error(client, "crm_activities_log_call", {"client_id": lead["id"], "occurred_at": "yesterday"})
        assert err["field"] == "occurred_at" and "ISO 8601" in err["message"] and today in err["message"]

        for bad in ("4.800,00", "€4,800", "4800 EUR"):
            err = await call_error(client, "crm_deals_update", {"deal_id": deal["id"], "value": bad})
            assert err["field"] == "value" and '"4800.50"' in err["message"], bad

        err = await call_error(client, "crm_clients_get", {"client_id": deal["id"]})
        assert err["code"] == "not_found" and f"{deal['id']} is a deal id, not a client id" in err["message"]

        other = await call(client, "crm_pipelines_create", {"name": "Enterprise", "stages": [{"name": "Pitch"}]})
        err = await call_error(client, "crm_deals_move_stage", {"deal_id": deal["id"], "stage_id": other["stages"][0]["id"]})
        assert "'Pitch'" in err["message"] and "'Enterprise'" in err["message"] and other["id"] in err["message"]
        assert err["field"] == "stage_id"

        await call(client, "crm_deals_delete", {"deal_id": deal["id"]})
        err = await call_error(client, "crm_deals_get", {"deal_id": deal["id"]})
        assert f"was deleted on {dt.date.today().isoformat()}" in err["message"] or "was deleted on" in err["message"]
        assert me["user"]["name"] in err["message"]

        dup = await call(client, "crm_clients_create_lead", {"business_name": "ACME S.r.l."})
        await call(client, "crm_clients_merge", {"survivor_id": lead["id"], "duplicate_ids": [dup["id"]]})
        err = await call_error(client, "crm_clients_get", {"client_id": dup["id"]})
        assert f"merged into {lead['id']}" in err["message"]

    other_org = make_org()
    async with mcp_client(server.mcp_url, other_org.token) as client:  # another organization learns nothing
        err = await call_error(client, "crm_clients_get", {"client_id": dup["id"]})
        assert err["message"] == f"client {dup['id']} not found"


async def test_users_me_answers_any_token_with_the_calendar(server, make_org, db):
    org = make_org()
    token, _ = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r"})
    async with mcp_client(server.mcp_url, token) as client:
        me = await call(client, "crm_users_me")
    assert me["permissions"] == ["clients:read"] and me["user"]["role"] == "admin"
    cal = me["calendar"]
    today = dt.date.fromisoformat(cal["today"])
    assert dt.date.fromisoformat(cal["week_start"]).weekday() == 0
    assert dt.date.fromisoformat(cal["week_start"]) <= today <= dt.date.fromisoformat(cal["week_end"])
    assert cal["month_start"] == today.replace(day=1).isoformat() and cal["timezone"] == me["organization"]["timezone"]
    assert (dt.date.fromisoformat(cal["month_end"]) + dt.timedelta(days=1)).day == 1
