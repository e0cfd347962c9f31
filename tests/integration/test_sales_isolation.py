"""Every sales tool: permissions decide who may call it, and another organization's ids are 'not found'."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from application.inventory import registry
from application.errors import ToolError
from application.permissions import RESOURCES
from tests.inprocess import Caller

SALES = ("deals", "pipelines", "services", "activities", "stats")
SALES_TOOLS = [op for op in registry if op.resource in SALES]


def test_every_sales_tool_is_declared():
    assert len(SALES_TOOLS) == 62


@pytest.fixture(scope="module")
def world(runtime, database_url):
    """Organization A with one of everything; organization B empty. Returns A's ids and callers for both."""
    from psycopg.rows import dict_row
    import psycopg
    import uuid

    from application import identity

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        a = identity.create_organization(conn, f"A {uuid.uuid4().hex[:6]}", f"a-{uuid.uuid4().hex[:6]}@example.com", "A")
        b = identity.create_organization(conn, f"B {uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}@example.com", "B")
        viewer_secret, _ = identity.create_token(conn, b.organization_id, b.user_id, {r: "r" for r in RESOURCES})
        pa = identity.principal_for_token(conn, a.token)
        pb = identity.principal_for_token(conn, b.token)
        pv = identity.principal_for_token(conn, viewer_secret)
    A = Caller(runtime, pa)
    client = A("crm_clients_create", {"business_name": "Secret Client"})
    contact = A("crm_clients_add_contact", {"client_id": client["id"], "name": "Secret Person"})["id"]
    pipeline = A("crm_pipelines_create", {"name": "Secret pipeline", "stages": [{"name": "S1"}, {"name": "S2"}]})
    cat = A("crm_services_create_category", {"name": "Secret category"})
    svc = A("crm_services_create", {"name": "Secret service", "unit_price": "10", "category_id": cat["id"]})
    deal = A("crm_deals_create", {"title": "Secret deal", "client_id": client["id"], "pipeline_id": pipeline["id"]})
    line = A("crm_deals_add_service", {"deal_id": deal["id"], "service_id": svc["id"]})["items"][0]["id"]
    A("crm_deals_add_contact", {"deal_id": deal["id"], "contact_id": contact})
    A("crm_deals_set_commission", {"deal_id": deal["id"], "user_id": str(a.user_id), "percent": "5"})
    note = A("crm_deals_add_note", {"deal_id": deal["id"], "body": "Secret note"})
    activity = A("crm_activities_log_call", {"deal_id": deal["id"], "subject": "Secret call"})
    ids = {"client_id": client["id"], "contact_id": contact, "pipeline_id": pipeline["id"],
           "stage_id": pipeline["stages"][0]["id"], "category_id": cat["id"], "service_id": svc["id"],
           "deal_id": deal["id"], "line_id": line, "note_id": note["id"], "activity_id": activity["id"],
           "user_id": str(a.user_id)}
    return {"ids": ids, "B": Caller(runtime, pb), "pb": pb, "pv": pv, "runtime": runtime}


def args_for(op, ids: dict[str, str]) -> dict[str, Any]:
    """Minimal valid arguments, pointing at organization A's entities."""
    props = op.input_schema()["properties"]
    required = set(op.input_schema().get("required", []))
    extra = {"name": "x", "title": "x", "body": "x", "q": "secret", "status": "accepted", "unit_price": "1",
             "start_date": "2020-01-01", "end_date": "2030-12-31", "stages": [{"name": "x"}], "stage_ids": [ids["stage_id"]],
             "duplicate_ids": [ids["client_id"]], "percent": "1"}
    out: dict[str, Any] = {}
    for key in props:
        if key in ids and (key in required or op.name.endswith(("_timeline", "_board", "_conversion"))):
            out[key] = ids[key]
        elif key in required:
            out[key] = extra[key]
    if op.name == "crm_activities_timeline":
        out.pop("deal_id", None)
    return out


@pytest.mark.parametrize("op", SALES_TOOLS, ids=lambda op: op.name)
def test_another_organizations_ids_are_not_found_and_never_leak(world, op):
    args = args_for(op, world["ids"])
    try:
        out = world["B"](op.name, args)
    except ToolError as e:  # another organization's ids do not exist for B
        assert e.code in ("not_found", "rule_violation"), f"{op.name}: unexpected tool error {e.code}: {e}"
        return
    text = json.dumps(out)
    assert "Secret" not in text and world["ids"]["deal_id"] not in text, f"{op.name} leaked: {text[:300]}"


@pytest.mark.parametrize("op", [o for o in SALES_TOOLS if o.kind != "query"], ids=lambda op: op.name)
def test_a_read_only_token_cannot_write(world, op):
    with pytest.raises(ToolError) as e:
        asyncio.run(world["runtime"].runner.call(world["pv"], op.name, args_for(op, world["ids"])))
    assert e.value.code == "permission_denied" and op.permission in e.value.message


@pytest.mark.parametrize("op", [o for o in SALES_TOOLS if o.kind == "query"], ids=lambda op: op.name)
def test_a_read_only_token_can_read(world, op):
    try:
        asyncio.run(world["runtime"].runner.call(world["pv"], op.name, args_for(op, world["ids"])))
    except ToolError as e:
        assert e.code != "permission_denied", e.message
