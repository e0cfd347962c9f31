"""Seed Example 2 over HTTP with the `mcp` SDK client: "Which deals did we close as won last month? Show total
revenue and the top 3 by value." Deals in two pipelines, won and lost across two months; the expected numbers
are computed here from what the test itself created."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def month_before(first_of_month: dt.date) -> tuple[dt.date, dt.date]:
    end = first_of_month - dt.timedelta(days=1)
    return end.replace(day=1), end


async def test_example_2_revenue_and_top_deals_won_last_month(server, make_org):
    org = make_org("Example2")
    last_start, last_end = month_before(dt.date.today().replace(day=1))
    prev_start, prev_end = month_before(last_start)

    async with mcp_client(server.mcp_url, org.token) as client:
        default = (await call(client, "crm_pipelines_list"))["items"][0]
        assert default["is_default"] and [s["probability"] for s in default["stages"]] == [10, 30, 60, 80]
        enterprise = await call(client, "crm_pipelines_create", {
            "name": "Enterprise", "stages": [{"name": "Discovery", "probability": 20}, {"name": "Offer", "probability": 60}]})
        hosting = await call(client, "crm_services_create", {"name": "Managed hosting", "unit_price": "9900", "vat_rate": "22"})

        # (client, pipeline, value or service lines, outcome, close date)
        plan = [
            ("ACME Corp", default, "45000", "accepted", last_start + dt.timedelta(days=2)),
            ("Studio Verdi", enterprise, "28500", "accepted", last_start + dt.timedelta(days=9)),
            ("TechStart", enterprise, ("service", 2), "accepted", last_end),
            ("Bar Roma", default, "15000", "accepted", last_start + dt.timedelta(days=4)),
            ("Ottica Neri", default, "12130", "accepted", last_start + dt.timedelta(days=12)),
            ("Forno Bassi", enterprise, "7000", "accepted", last_start),
            *[(f"Lost {i}", default if i % 2 else enterprise, str(5000 + i * 1000), "rejected",
               last_start + dt.timedelta(days=i)) for i in range(12)],
            ("Old Win", default, "99000", "accepted", prev_end),       # the month before: not in the report
            ("Old Win 2", enterprise, "55000", "accepted", prev_start),
            ("Old Loss", default, "8000", "rejected", prev_start + dt.timedelta(days=3)),
            ("Still Open", default, "70000", None, None),              # open deals never count
        ]
        created = []
        for name, pipeline, value, outcome, close_date in plan:
            client_row = await call(client, "crm_clients_create", {"business_name": name})
            args = {"title": f"{name} deal", "client_id": client_row["id"], "pipeline_id": pipeline["id"],
                    "stage_id": pipeline["stages"][-1]["id"]}
            if isinstance(value, str):
                args["value"] = value
            deal = await call(client, "crm_deals_create", args)
            if not isinstance(value, str):
                lines = await call(client, "crm_deals_add_service", {"deal_id": deal["id"], "service_id": hosting["id"],
                                                                     "quantity": value[1]})
                deal = {**deal, "value": lines["deal_value"]}  # a line tool answers with the lines and the new value
            if outcome:
                status_args = {"deal_id": deal["id"], "status": outcome, "close_date": close_date.isoformat()}
                if outcome == "rejected":
                    status_args["reason"] = "price"
                deal = await call(client, "crm_deals_set_status", status_args)
                assert deal["close_date"] == close_date.isoformat()
            created.append((name, pipeline["id"], deal, outcome, close_date))

        in_range = [c for c in created if c[3] and last_start <= c[4] <= last_end]
        won = [c for c in in_range if c[3] == "accepted"]
        lost = [c for c in in_range if c[3] == "rejected"]
        expected_total = sum(Decimal(c[2]["value"]["amount"]) for c in won)
        assert expected_total == Decimal("127430.00")
        expected_rate = Decimal(len(won)) / Decimal(len(won) + len(lost))
        expected_top3 = [(c[0], Decimal(c[2]["value"]["amount"]))
                         for c in sorted(won, key=lambda c: -Decimal(c[2]["value"]["amount"]))[:3]]

        # 1. crm_stats_revenue for last month
        report = await call(client, "crm_stats_revenue", {"start_date": last_start.isoformat(), "end_date": last_end.isoformat()})
        assert Decimal(report["total_revenue"]["amount"]) == expected_total
        assert report["total_revenue"]["cents"] == int(expected_total * 100)
        assert report["total_revenue"]["formatted"] == "€127,430.00"
        assert report["deals_won"] == len(won) and report["deals_lost"] == len(lost)
        assert report["win_rate"]["fraction"] == float(expected_rate.quantize(Decimal("0.0001")))
        assert report["win_rate"]["percent"] == float((expected_rate * 100).quantize(Decimal("0.1")))
        assert report["average_won_value"]["cents"] == round(int(expected_total * 100) / len(won))
        by_pipeline = {g["key"]: Decimal(g["revenue"]["amount"]) for g in report["by_pipeline"]}
        for pid in (default["id"], enterprise["id"]):
            assert by_pipeline[pid] == sum(Decimal(c[2]["value"]["amount"]) for c in won if c[1] == pid)
        assert [g["key"] for g in report["by_month"]] == [last_start.strftime("%Y-%m")]
        assert report["by_owner"][0]["key"] == str(org.user_id)

        # 2. crm_deals_list with status accepted; the assistant sorts and takes the top 3
        page = await call(client, "crm_deals_list", {"status": "accepted", "limit": 50, "closed_from": last_start.isoformat(),
                                                     "closed_to": last_end.isoformat()})
        assert page.get("next_cursor") is None and len(page["items"]) == len(won)
        assert sum(Decimal(d["value"]["amount"]) for d in page["items"]) == expected_total
        top3 = sorted(page["items"], key=lambda d: -Decimal(d["value"]["amount"]))[:3]
        assert [(d["client_name"], Decimal(d["value"]["amount"])) for d in top3] == expected_top3
        assert [name for name, _ in expected_top3] == ["ACME Corp", "Studio Verdi", "TechStart"]
        # the server can also sort by value itself
        sorted_page = await call(client, "crm_deals_list", {"status": "accepted", "sort": "value_desc", "limit": 3,
                                                            "closed_from": last_start.isoformat(), "closed_to": last_end.isoformat()})
        assert [d["client_name"] for d in sorted_page["items"]] == ["ACME Corp", "Studio Verdi", "TechStart"]
        assert sorted_page.get("next_cursor") is not None

        # rules visible through MCP: a pipeline with open deals cannot be deleted; the stage with deals cannot go
        err = await call_error(client, "crm_pipelines_delete", {"pipeline_id": default["id"]})
        assert err["field"] == "pipeline_id"
        err = await call_error(client, "crm_pipelines_remove_stage", {"pipeline_id": enterprise["id"],
                                                                     "stage_id": enterprise["stages"][-1]["id"]})
        assert err["field"] == "stage_id"
        tools = {t.name: t for t in (await client.list_tools()).tools}
        if "crm_stats_revenue" in tools:
            assert tools["crm_stats_revenue"].annotations.read_only_hint is True
