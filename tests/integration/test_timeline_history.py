"""Investigating with the timeline: every change of a deal, client or task, who made it and when."""

from __future__ import annotations

import uuid

import psycopg
from psycopg.rows import dict_row

from application import identity
from tests.inprocess import call


def test_a_deals_whole_life_and_its_clients_tasks_show_with_who_did_what(runtime, make_org, database_url):
    org = make_org()
    admin = org.principal(database_url)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as db:
        mario_id = identity.create_user(db, org.organization_id, f"mario-{uuid.uuid4().hex[:6]}@x.it", "Mario Rossi", "sales")
        token, _ = identity.create_token(db, org.organization_id, mario_id, None, name="Claude on Mario's laptop")
        mario = identity.principal_for_token(db, token)
    client = call(runtime, admin, "crm_clients_create_lead", {"business_name": "ACME Logistics SpA"})
    call(runtime, admin, "crm_clients_update_status", {"client_id": client["id"], "status": "qualified"})
    deal = call(runtime, mario, "crm_deals_create", {"title": "Magazzino", "client_id": client["id"], "value": "4800"})
    stages = call(runtime, admin, "crm_pipelines_list")["items"][0]["stages"]
    call(runtime, mario, "crm_deals_move_stage", {"deal_id": deal["id"], "stage_id": stages[1]["id"]})
    call(runtime, mario, "crm_deals_update", {"deal_id": deal["id"], "value": "5200"})
    call(runtime, mario, "crm_deals_assign", {"deal_id": deal["id"], "user_id": str(admin.user_id)})
    call(runtime, mario, "crm_deals_set_status", {"deal_id": deal["id"], "status": "rejected", "reason": "budget"})
    task = call(runtime, admin, "crm_tasks_create", {"title": "Richiamare", "client_id": client["id"]})
    call(runtime, admin, "crm_tasks_complete", {"task_id": task["id"]})
    call(runtime, admin, "crm_deals_delete", {"deal_id": deal["id"]})

    entries = call(runtime, admin, "crm_activities_timeline", {"client_id": client["id"], "limit": 50})["items"]
    by_kind = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e)
    assert {"client_created", "client_status", "deal_created", "deal_stage", "deal_value", "deal_owner",
            "deal_status", "deal_deleted", "task_created", "task_done"} <= set(by_kind)
    value = by_kind["deal_value"][0]
    assert value["data"]["previous"] == "€4,800.00" and value["data"]["value"] == "€5,200.00"
    assert by_kind["deal_deleted"][0]["user_id"] == str(admin.user_id)
    for kind in ("deal_stage", "deal_value", "deal_status"):
        assert by_kind[kind][0]["user_name"] == "Mario Rossi", kind
        assert by_kind[kind][0]["token_name"] == "Claude on Mario's laptop", kind
    assert by_kind["client_status"][0]["user_id"] == str(admin.user_id)
    assert by_kind["task_done"][0]["task_id"] == task["id"]
    assert by_kind["deal_deleted"][0]["title"] == "Deal deleted: Magazzino"

    # The deleted deal's own history is still there, and a rebuild gives the same timeline.
    deal_entries = call(runtime, admin, "crm_activities_timeline", {"deal_id": deal["id"], "limit": 50})["items"]
    assert [e["kind"] for e in deal_entries][0] == "deal_deleted" and len(deal_entries) >= 6
    runtime.projector.rebuild(runtime.projection("timeline"))
    again = call(runtime, admin, "crm_activities_timeline", {"client_id": client["id"], "limit": 50})["items"]
    assert again == entries
