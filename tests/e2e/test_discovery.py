"""Discovery mode for clients that cap their tool count, and tool selections that say what is wrong."""

from __future__ import annotations

import httpx
import pytest

from application import identity
from application.inventory import PRESETS, registry
from tests.mcp_helpers import all_tools, call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_discover_lists_four_tools_that_reach_every_tool_the_token_may_use(server, make_org, db):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token, query="toolsets=discover") as client:
        listed = {t.name: t for t in await all_tools(client)}
        assert set(listed) == {"crm_tools_search", "crm_tools_call_read", "crm_tools_call_write",
                               "crm_tools_call_destructive"}
        hints = {n: (t.annotations.read_only_hint, t.annotations.destructive_hint) for n, t in listed.items()}
        # unsent hints take the spec's defaults; a read-only tool's destructiveHint means nothing
        assert hints == {"crm_tools_search": (True, None), "crm_tools_call_read": (True, None),
                         "crm_tools_call_write": (None, False), "crm_tools_call_destructive": (None, True)}

        found = await call(client, "crm_tools_search", {"q": "overdue tasks"})
        assert found["items"][0]["name"] == "crm_tasks_list" and found["items"][0]["call_with"] == "crm_tools_call_read"
        by_toolset = await call(client, "crm_tools_search", {"toolset": "wiki", "kind": "destructive", "limit": 50})
        assert {i["name"] for i in by_toolset["items"]} == {
            op.name for op in registry if op.toolset == "wiki" and op.kind == "destructive"}

        lead = (await call(client, "crm_tools_call_write", {"name": "crm_clients_create_lead",
                                                           "arguments": {"business_name": "Via Discovery Srl"}}))["result"]
        got = await call(client, "crm_tools_call_read", {"name": "crm_clients_get", "arguments": {"client_id": lead["id"]}})
        assert got == {"tool": "crm_clients_get", "result": got["result"]} and got["result"]["business_name"] == "Via Discovery Srl"
        err = await call_error(client, "crm_tools_call_read", {"name": "crm_clients_delete", "arguments": {"client_id": lead["id"]}})
        assert err["field"] == "name" and "crm_tools_call_destructive" in err["message"]
        err = await call_error(client, "crm_tools_call_write", {"name": "crm_clients_delete", "arguments": {"client_id": lead["id"]}})
        assert "crm_tools_call_destructive" in err["message"]
        removed = await call(client, "crm_tools_call_destructive", {"name": "crm_clients_delete",
                                                                    "arguments": {"client_id": lead["id"]}})
        assert removed["result"]["removed"] is True
        err = await call_error(client, "crm_tools_call_read", {"name": "crm_clients_get", "arguments": {"nope": 1}})
        assert err["code"] == "invalid_arguments" and err["field"] == "nope"  # the called tool's own validation

    # The called tool's permission applies unchanged: a clients:r token searches and reads, never writes.
    token, _ = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r"})
    async with mcp_client(server.mcp_url, token, query="toolsets=discover") as client:
        names = {i["name"] for i in (await call(client, "crm_tools_search", {"limit": 50}))["items"]}
        assert names == {op.name for op in registry if op.toolset == "clients" and op.kind == "query"
                         and not op.missing({"clients": "r"})} | {op.name for op in registry if op.free} | {"search", "fetch"}
        err = await call_error(client, "crm_tools_call_write", {"name": "crm_clients_create_lead",
                                                                "arguments": {"business_name": "No"}})
        assert err["code"] == "permission_denied" and "clients:write" in err["message"]


async def test_presets_and_unknown_toolsets(server, make_org):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token, query="toolsets=sales") as client:
        names = {t.name for t in await all_tools(client)}
    assert {op.toolset for op in registry if op.name in names} == {*PRESETS["sales"], "connector"}
    async with mcp_client(server.mcp_url, org.token) as client:  # by default: every toolset but discovery
        names = {t.name for t in await all_tools(client)}
    assert names == {op.name for op in registry if registry.toolsets[op.toolset].default}
    r = httpx.post(f"{server.mcp_url}?toolsets=clients,bogus", headers={
        "Authorization": f"Bearer {org.token}", "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json"}, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 400
    assert "bogus" in r.json()["error_description"] and "clients" in r.json()["error_description"]
    assert "sales" in r.json()["error_description"]
