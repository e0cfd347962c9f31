"""Every sales tool once, on PostgreSQL, through the in-process service."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.inprocess import Caller


@pytest.fixture
def call(runtime, make_org):
    org = make_org("Sales")
    c = Caller(runtime, org.principal(runtime.database_url))
    c.org = org
    return c


def test_sales_walkthrough(call):
    pipes = call("crm_pipelines_list")["items"]
    assert [s["name"] for s in pipes[0]["stages"]] == ["New", "Qualified", "Proposal", "Negotiation"]
    default = pipes[0]
    client = call("crm_clients_create", {"business_name": "ACME Corp"})
    deal = call("crm_deals_create", {"title": "ACME website", "client_id": client["id"]})
    assert deal["stage_name"] == "New"
    got = call("crm_deals_get", {"deal_id": deal["id"]})
    assert got["pipeline_id"] == default["id"] and got["stage_id"] == default["stages"][0]["id"]
    assert deal["value"]["cents"] == 0 and deal["value"]["currency"] == "EUR"
    cat = call("crm_services_create_category", {"name": "Web"})
    svc = call("crm_services_create", {"name": "Web design", "unit_price": "1000", "vat_rate": "22", "unit": "day",
                                       "code": "WEB-1", "category_id": cat["id"]})
    assert svc["unit_price"]["formatted"] == "€1,000.00"
    d = call("crm_deals_add_service", {"deal_id": deal["id"], "service_id": svc["id"], "quantity": "3", "discount_percent": "10"})
    assert d["deal_value"]["cents"] == 270000
    assert call("crm_deals_get", {"deal_id": deal["id"]})["totals"]["vat_total"]["cents"] == 59400
    line = d["items"][0]
    d = call("crm_deals_update_service", {"deal_id": deal["id"], "line_id": line["id"], "quantity": 2})
    assert d["deal_value"]["cents"] == 180000
    assert call("crm_deals_list_services", {"deal_id": deal["id"]})["total"]["cents"] == 180000
    d = call("crm_deals_set_commission", {"deal_id": deal["id"], "user_id": str(call.org.user_id), "percent": "10"})
    assert d["items"][0]["amount"]["cents"] == 18000
    assert call("crm_deals_list_commissions", {"deal_id": deal["id"]})["total"]["cents"] == 18000
    d = call("crm_deals_move_stage", {"deal_id": deal["id"], "stage_id": default["stages"][2]["id"]})
    assert d["stage_name"] == "Proposal"
    board = call("crm_pipelines_board", {"pipeline_id": default["id"]})
    assert board["stages"][2]["count"] == 1 and board["stages"][2]["total_value"]["cents"] == 180000
    call("crm_deals_add_note", {"deal_id": deal["id"], "body": "Sent the offer"})
    call("crm_activities_log_call", {"deal_id": deal["id"], "direction": "outbound", "duration_minutes": 5, "subject": "Follow-up"})
    d = call("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
    assert d["status"] == "accepted" and d["close_date"] is not None
    tl = call("crm_activities_timeline", {"client_id": client["id"]})["items"]
    kinds = [e["kind"] for e in tl]  # newest first: every change of the deal, its value as lines were added too
    assert kinds[:4] == ["deal_status", "activity", "note", "deal_stage"]
    assert kinds[-2:] == ["deal_created", "client_created"] and set(kinds[4:-2]) == {"deal_value"}
    assert tl[3]["stage_name"] == "Proposal"
    today = dt.date.today()
    rev = call("crm_stats_revenue", {"start_date": (today - dt.timedelta(days=40)).isoformat(),
                                     "end_date": (today + dt.timedelta(days=1)).isoformat()})
    assert rev["total_revenue"]["cents"] == 180000 and rev["deals_won"] == 1 and rev["win_rate"]["percent"] == 100.0
    assert call("crm_deals_search", {"q": "acme"})["items"][0]["id"] == deal["id"]
    assert call("crm_deals_list", {"status": "accepted"})["items"][0]["id"] == deal["id"]
    for name in ("crm_stats_kpi_snapshot", "crm_stats_tasks_overview", "crm_stats_forecast", "crm_stats_pipeline_conversion"):
        call(name, {})
    period = {"start_date": (today - dt.timedelta(days=30)).isoformat(), "end_date": today.isoformat()}
    for name in ("crm_stats_leads_by_source", "crm_stats_activity_by_user", "crm_stats_newsletter_performance"):
        call(name, period)
    err = call.error("crm_services_delete", {"service_id": svc["id"]})
    assert err.field == "service_id"
    call("crm_services_archive", {"service_id": svc["id"]})
    assert call("crm_deals_get", {"deal_id": deal["id"]})["services"][0]["service_active"] is False
