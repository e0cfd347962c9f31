"""Sales rules on PostgreSQL: lazy default pipeline, stage/pipeline deletion, merges, lists, timeline, stats, rebuild."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from tests.conftest import settle
from tests.inprocess import Caller


@pytest.fixture
def call(runtime, make_org):
    org = make_org("Rules")
    c = Caller(runtime, org.principal(runtime.database_url))
    c.org = org
    return c


def test_default_pipeline_is_shown_before_use_and_written_once_with_the_same_ids(call, runtime, db):
    listed = call("crm_pipelines_list")["items"]
    assert len(listed) == 1 and listed[0]["is_default"]
    assert db.execute("SELECT count(*) AS n FROM pipelines WHERE organization_id = %s",
                      (call.org.organization_id,)).fetchone()["n"] == 0
    client = call("crm_clients_create", {"business_name": "Concurrent Srl"})
    errors: list[Exception] = []

    def create() -> None:
        try:
            call("crm_deals_create", {"title": "first use", "client_id": client["id"]})
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    settle(runtime)
    assert errors == []
    after = call("crm_pipelines_list")["items"]
    assert [p["id"] for p in after] == [listed[0]["id"]]
    assert [s["id"] for s in after[0]["stages"]] == [s["id"] for s in listed[0]["stages"]]
    assert call("crm_pipelines_board", {})["open_deals"] == 4


def test_stage_removal_and_pipeline_deletion_rules(call):
    p = call("crm_pipelines_create", {"name": "Rentals", "stages": [{"name": "A", "probability": 10},
                                                                    {"name": "B", "probability": 50}]})
    a, b = (s["id"] for s in p["stages"])
    client = call("crm_clients_create", {"business_name": "Noleggi Spa"})
    deal = call("crm_deals_create", {"title": "Van", "client_id": client["id"], "pipeline_id": p["id"], "value": "1000"})
    assert deal["stage_name"] == "A" and "stage_id" not in deal  # rows name the stage; crm_deals_get has its id
    err = call.error("crm_pipelines_remove_stage", {"pipeline_id": p["id"], "stage_id": a})
    assert err.code == "stage_not_empty" and err.field == "stage_id"
    call("crm_deals_move_stage", {"deal_id": deal["id"], "stage_id": b})
    p2 = call("crm_pipelines_remove_stage", {"pipeline_id": p["id"], "stage_id": a})
    assert [s["name"] for s in p2["stages"]] == ["B"] and p2["stages"][0]["position"] == 0
    err = call.error("crm_deals_move_stage", {"deal_id": deal["id"], "stage_id": a})
    assert err.field == "stage_id"
    assert call.error("crm_pipelines_delete", {"pipeline_id": p["id"]}).code == "pipeline_has_open_deals"
    call("crm_deals_set_status", {"deal_id": deal["id"], "status": "rejected", "reason": "budget"})
    assert call("crm_pipelines_delete", {"pipeline_id": p["id"]})["removed"] is True
    assert p["id"] not in [x["id"] for x in call("crm_pipelines_list")["items"]]
    today = dt.date.today()
    rev = call("crm_stats_revenue", {"start_date": (today - dt.timedelta(days=3)).isoformat(),
                                     "end_date": (today + dt.timedelta(days=1)).isoformat()})
    assert rev["deals_lost"] == 1 and rev["by_pipeline"][0]["name"] == "Rentals"


def test_stage_add_rename_reorder(call):
    p = call("crm_pipelines_list")["items"][0]
    added = call("crm_pipelines_add_stage", {"pipeline_id": p["id"], "name": "Contract", "probability": 90})
    assert [s["name"] for s in added["stages"]][-1] == "Contract"
    stage = added["stages"][-1]["id"]
    upd = call("crm_pipelines_update_stage", {"pipeline_id": p["id"], "stage_id": stage, "name": "Signed"})
    assert upd["stages"][-1]["name"] == "Signed" and upd["stages"][-1]["probability"] == 90
    order = [s["id"] for s in reversed(upd["stages"])]
    re = call("crm_pipelines_reorder_stages", {"pipeline_id": p["id"], "stage_ids": order})
    assert [s["id"] for s in re["stages"]] == order and [s["position"] for s in re["stages"]] == [0, 1, 2, 3, 4]
    assert call("crm_pipelines_list_stages", {"pipeline_id": p["id"]})["items"][0]["name"] == "Signed"
    renamed = call("crm_pipelines_update", {"pipeline_id": p["id"], "name": "Main"})
    assert renamed["name"] == "Main"


def test_merging_clients_moves_deals_and_timeline(call):
    survivor = call("crm_clients_create", {"business_name": "Rossi Srl"})
    dup = call("crm_clients_create", {"business_name": "Rossi S.r.l."})
    deal = call("crm_deals_create", {"title": "Impianto", "client_id": dup["id"], "value": "500"})
    call("crm_activities_log_note", {"client_id": dup["id"], "body": "met at the fair"})
    call("crm_clients_merge", {"survivor_id": survivor["id"], "duplicate_ids": [dup["id"]]})
    assert call("crm_deals_get", {"deal_id": deal["id"]})["client_id"] == survivor["id"]
    assert [d["id"] for d in call("crm_clients_list_deals", {"client_id": survivor["id"]})["items"]] == [deal["id"]]
    kinds = {e["kind"] for e in call("crm_activities_timeline", {"client_id": survivor["id"]})["items"]}
    assert kinds == {"activity", "deal_created", "client_created"}  # both clients' own creation, the duplicate's too
    assert call("crm_activities_list", {"client_id": survivor["id"]})["items"][0]["type"] == "note"


def test_deal_list_filters_sorts_and_pages(call):
    client = call("crm_clients_create", {"business_name": "Listing"})
    values = [100, 700, 300, 900, 500, 200]
    ids = {v: call("crm_deals_create", {"title": f"d{v}", "client_id": client["id"], "value": str(v)})["id"] for v in values}
    seen, cursor = [], None
    while True:
        args = {"sort": "value_desc", "limit": 4, "client_id": client["id"]}
        if cursor:
            args["cursor"] = cursor
        page = call("crm_deals_list", args)
        seen += [d["value"]["cents"] // 100 for d in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == sorted(values, reverse=True)
    mid = call("crm_deals_list", {"value_min": "200", "value_max": "700", "sort": "value_asc", "client_id": client["id"]})
    assert [d["value"]["cents"] // 100 for d in mid["items"]] == [200, 300, 500, 700]
    call("crm_deals_set_status", {"deal_id": ids[900], "status": "accepted", "close_date": "2025-01-10"})
    call("crm_deals_set_status", {"deal_id": ids[100], "status": "accepted"})
    by_close = call("crm_deals_list", {"status": "accepted", "sort": "close_date_asc", "client_id": client["id"]})
    assert [d["id"] for d in by_close["items"]] == [ids[900], ids[100]]
    reopened = call("crm_deals_set_status", {"deal_id": ids[900], "status": "open"})
    assert "close_date" not in reopened
    assert call("crm_deals_delete", {"deal_id": ids[500]})["removed"]
    assert call.error("crm_deals_get", {"deal_id": ids[500]}).code == "not_found"


def test_deal_contacts_owner_and_notes(call, db):
    from application import identity

    mario = identity.create_user(db, call.org.organization_id, f"mario{call.org.user_id.hex[:6]}@example.com", "Mario", "sales")
    client = call("crm_clients_create", {"business_name": "Contacts Spa"})
    contact = call("crm_clients_add_contact", {"client_id": client["id"], "name": "Anna Bianchi", "email": "anna@example.com"})
    contact_id = contact["id"]
    assert contact == {"id": contact_id, "name": "Anna Bianchi", "email": "anna@example.com"}  # the contact, not the client
    spare = call("crm_clients_add_contact", {"client_id": client["id"], "name": "Luca Neri", "email": "luca@example.com"})
    changed = call("crm_clients_update_contact", {"client_id": client["id"], "contact_id": spare["id"], "role": "CFO",
                                                   "email": None})
    assert changed == {"id": spare["id"], "name": "Luca Neri", "role": "CFO"}
    assert call("crm_clients_list_contacts", {"client_id": client["id"]})["items"] == [contact, changed]
    assert call("crm_clients_remove_contact", {"client_id": client["id"], "contact_id": spare["id"]}) == {
        "id": spare["id"], "entity": "contact", "removed": True}
    assert call("crm_clients_list_contacts", {"client_id": client["id"]})["items"] == [contact]
    deal = call("crm_deals_create", {"title": "CRM", "client_id": client["id"]})
    d = call("crm_deals_add_contact", {"deal_id": deal["id"], "contact_id": contact_id, "role": "decision maker"})
    assert d["items"][0]["name"] == "Anna Bianchi" and d["items"][0]["email"] == "anna@example.com"
    other = call("crm_clients_create", {"business_name": "Other"})
    oc = call("crm_clients_add_contact", {"client_id": other["id"], "name": "Not mine"})["id"]
    assert call.error("crm_deals_add_contact", {"deal_id": deal["id"], "contact_id": oc}).field == "contact_id"
    assert call("crm_deals_list_contacts", {"deal_id": deal["id"]})["items"][0]["role"] == "decision maker"
    assert call("crm_deals_remove_contact", {"deal_id": deal["id"], "contact_id": contact_id})["items"] == []
    assert call("crm_deals_assign", {"deal_id": deal["id"], "user_id": str(mario)})["owner_name"] == "Mario"
    assert call("crm_deals_get", {"deal_id": deal["id"]})["owner_id"] == str(mario)
    assert "owner_name" not in call("crm_deals_unassign", {"deal_id": deal["id"]})
    note = call("crm_deals_add_note", {"deal_id": deal["id"], "body": "Budget approved in March"})
    assert call("crm_deals_search", {"q": "budget approved"})["items"][0]["id"] == deal["id"]
    call("crm_deals_update_note", {"deal_id": deal["id"], "note_id": note["id"], "body": "Budget approved in April"})
    assert call("crm_deals_list_notes", {"deal_id": deal["id"]})["items"][0]["body"].endswith("April")
    tl = call("crm_activities_timeline", {"deal_id": deal["id"], "kinds": ["note"]})["items"]
    assert tl[0]["body"] == "Budget approved in April"
    call("crm_deals_delete_note", {"deal_id": deal["id"], "note_id": note["id"]})
    assert call("crm_activities_timeline", {"deal_id": deal["id"], "kinds": ["note"]})["items"] == []
    d = call("crm_deals_set_commission", {"deal_id": deal["id"], "user_id": str(mario), "amount": "250"})
    assert d["items"][0]["amount"]["formatted"] == "€250.00"
    assert call("crm_deals_remove_commission", {"deal_id": deal["id"], "user_id": str(mario)})["items"] == []
    u = call("crm_deals_update", {"deal_id": deal["id"], "title": "CRM rollout", "value": "1234.56"})
    assert u["title"] == "CRM rollout" and u["value"]["cents"] == 123456
    assert call("crm_deals_get", {"deal_id": deal["id"]})["value_is_explicit"]


def test_services_catalog(call):
    cat = call("crm_services_create_category", {"name": "Hardware"})
    s = call("crm_services_create", {"name": "Router X200", "code": "RX200", "unit_price": "149.90", "category_id": cat["id"]})
    assert call("crm_services_search", {"q": "rx200"})["items"][0]["id"] == s["id"]
    assert call("crm_services_search", {"q": "routr"})["items"][0]["id"] == s["id"]
    assert call("crm_services_list", {"category_id": cat["id"]})["items"][0]["unit_price"]["cents"] == 14990
    assert call.error("crm_services_delete_category", {"category_id": cat["id"]}).code == "category_not_empty"
    u = call("crm_services_update", {"service_id": s["id"], "unit_price": "159", "category_id": None})
    assert u["unit_price"]["cents"] == 15900 and "category_id" not in u
    assert call("crm_services_list_categories")["items"][0]["services_count"] == 0
    call("crm_services_delete_category", {"category_id": cat["id"]})
    assert call("crm_services_get", {"service_id": s["id"]})["name"] == "Router X200"
    archived = call("crm_services_archive", {"service_id": s["id"]})
    assert archived["active"] is False
    assert call("crm_services_list", {"active": True})["items"] == []
    client = call("crm_clients_create", {"business_name": "Buyer"})
    deal = call("crm_deals_create", {"title": "net", "client_id": client["id"]})
    assert call.error("crm_deals_add_service", {"deal_id": deal["id"], "service_id": s["id"]}).code == "service_archived"
    assert call("crm_services_delete", {"service_id": s["id"]})["removed"]


def test_activities(call):
    client = call("crm_clients_create", {"business_name": "Meeting Srl"})
    start = dt.datetime(2026, 1, 10, 9, tzinfo=dt.timezone.utc)
    m = call("crm_activities_log_meeting", {"client_id": client["id"], "occurred_at": start.isoformat(),
                                            "end": (start + dt.timedelta(hours=1)).isoformat(), "attendees": ["Anna"],
                                            "location": "Milano", "subject": "Kickoff"})
    assert m["details"]["location"] == "Milano" and m["user_id"] == str(call.org.user_id)
    e = call("crm_activities_log_email", {"client_id": client["id"], "direction": "inbound", "snippet": "Hi"})
    upd = call("crm_activities_update", {"activity_id": m["id"], "details": {"location": "Roma"}, "subject": "Kick-off"})
    assert upd["details"] == {"end": m["details"]["end"], "attendees": ["Anna"], "location": "Roma"}
    assert call("crm_activities_get", {"activity_id": e["id"]})["type"] == "email"
    assert [a["id"] for a in call("crm_activities_list", {"client_id": client["id"], "type": "meeting"})["items"]] == [m["id"]]
    tl = [x for x in call("crm_activities_timeline", {"client_id": client["id"]})["items"] if x["kind"] == "activity"]
    assert [x["ref_id"] for x in tl] == [e["id"], m["id"]] and tl[1]["title"] == "Kick-off"
    call("crm_activities_delete", {"activity_id": e["id"]})
    tl = call("crm_activities_timeline", {"client_id": client["id"]})["items"]
    assert [x["ref_id"] for x in tl if x["kind"] == "activity"] == [m["id"]]
    assert call.error("crm_activities_log_call", {}).field == "client_id"
    stats = call("crm_stats_activity_by_user", {"start_date": "2026-01-01", "end_date": "2026-01-31"})
    assert stats["users"][0]["meetings"] == 1


def test_sales_projections_rebuild_to_identical_rows(call, runtime, db):
    client = call("crm_clients_create", {"business_name": "Rebuild"})
    svc = call("crm_services_create", {"name": "Consulting", "unit_price": "80", "unit": "hour"})
    deal = call("crm_deals_create", {"title": "Audit", "client_id": client["id"]})
    call("crm_deals_add_service", {"deal_id": deal["id"], "service_id": svc["id"], "quantity": "7.5"})
    stage_id = call("crm_deals_get", {"deal_id": deal["id"]})["stage_id"]
    call("crm_deals_move_stage", {"deal_id": deal["id"], "stage_id": stage_id})
    call("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
    call("crm_activities_log_call", {"deal_id": deal["id"], "outcome": "happy"})
    org = call.org.organization_id
    queries = {
        "deals": "SELECT * FROM deals WHERE organization_id = %s ORDER BY id",
        "deal_services": "SELECT * FROM deal_services WHERE organization_id = %s ORDER BY id",
        "history": "SELECT * FROM deal_stage_history WHERE organization_id = %s ORDER BY entered_at, stage_id",
        "pipelines": "SELECT * FROM pipeline_stages WHERE organization_id = %s ORDER BY id",
        "timeline": "SELECT * FROM timeline_entries WHERE organization_id = %s ORDER BY id",
        "activities": "SELECT * FROM activities WHERE organization_id = %s ORDER BY id",
    }
    before = {k: db.execute(q, (org,)).fetchall() for k, q in queries.items()}
    assert before["deal_services"][0]["total_cents"] == 60000
    for name in ("pipelines", "deals", "services", "activities", "timeline"):
        runtime.projector.rebuild(runtime.projection(name))
    after = {k: db.execute(q, (org,)).fetchall() for k, q in queries.items()}
    assert after == before


def test_revenue_summary_follows_reopen_value_owner_pipeline_changes_and_deletes(call, db):
    from application import identity

    other_user = identity.create_user(db, call.org.organization_id, f"o{call.org.user_id.hex[:6]}@example.com", "O", "sales")
    client = call("crm_clients_create", {"business_name": "Stats"})
    p2 = call("crm_pipelines_create", {"name": "Second", "stages": [{"name": "Only", "probability": 50}]})
    d1 = call("crm_deals_create", {"title": "one", "client_id": client["id"], "value": "100"})
    d2 = call("crm_deals_create", {"title": "two", "client_id": client["id"], "value": "200"})
    d3 = call("crm_deals_create", {"title": "three", "client_id": client["id"], "value": "300"})
    for d in (d1, d2, d3):
        call("crm_deals_set_status", {"deal_id": d["id"], "status": "accepted", "close_date": "2025-06-10"})
    call("crm_deals_set_status", {"deal_id": d1["id"], "status": "open"})                       # reopened: out
    call("crm_deals_update", {"deal_id": d2["id"], "value": "250"})                              # value change
    call("crm_deals_assign", {"deal_id": d2["id"], "user_id": str(other_user)})                  # owner change
    call("crm_deals_move_stage", {"deal_id": d3["id"], "pipeline_id": p2["id"], "stage_id": p2["stages"][0]["id"]})
    call("crm_deals_set_status", {"deal_id": d3["id"], "status": "rejected", "close_date": "2025-07-01"})
    d4 = call("crm_deals_create", {"title": "four", "client_id": client["id"], "value": "999"})
    call("crm_deals_set_status", {"deal_id": d4["id"], "status": "accepted", "close_date": "2025-06-11"})
    call("crm_deals_delete", {"deal_id": d4["id"]})                                              # deleted: out
    rev = call("crm_stats_revenue", {"start_date": "2025-06-01", "end_date": "2025-07-31"})
    direct = db.execute(
        "SELECT count(*) FILTER (WHERE status = 'accepted') AS won, count(*) FILTER (WHERE status = 'rejected') AS lost,"
        " coalesce(sum(value_cents) FILTER (WHERE status = 'accepted'), 0) AS cents FROM deals"
        " WHERE organization_id = %s AND close_date BETWEEN '2025-06-01' AND '2025-07-31'",
        (call.org.organization_id,)).fetchone()
    assert (rev["deals_won"], rev["deals_lost"], rev["total_revenue"]["cents"]) == (direct["won"], direct["lost"], direct["cents"])
    assert (rev["deals_won"], rev["deals_lost"], rev["total_revenue"]["cents"]) == (1, 1, 25000)
    assert {g["key"]: g["won"] for g in rev["by_owner"]} == {str(other_user): 1, str(call.org.user_id): 0}
    assert {g["name"]: (g["won"], g["lost"]) for g in rev["by_pipeline"]} == {"Sales": (1, 0), "Second": (0, 1)}
    assert [(g["key"], g["won"], g["lost"]) for g in rev["by_month"]] == [("2025-06", 1, 0), ("2025-07", 0, 1)]
    assert rev["win_rate"]["percent"] == 50.0
