"""One log line per tool call: organization, tool, duration, status — never arguments or results."""

from __future__ import annotations

import re
import pytest

from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_tool_call_log_lines_carry_no_payload(server, make_org):
    org = make_org()
    secret = "Riservatissimo Srl 4242"
    async with mcp_client(server.mcp_url, org.token) as client:
        await call(client, "crm_clients_create_lead", {"business_name": secret, "email": "private@riservato.it"})
        await call_error(client, "crm_clients_create_lead", {"business_name": secret, "email": "bad"})
    log = server.log_path.read_text()
    assert secret not in log and "private@riservato.it" not in log
    lines = [line for line in log.splitlines() if f"org={org.organization_id}" in line]
    assert len(lines) == 2
    pattern = re.compile(rf"tool_call org={org.organization_id} tool=crm_clients_create_lead duration_ms=[\d.]+ status=(\w+)$")
    assert [pattern.search(line).group(1) for line in lines] == ["ok", "invalid_arguments"]


async def test_hostile_requests_leave_no_argument_in_the_server_log(server, make_org):
    """A canary inside every part of hostile requests (arguments, names, ids, cursors, OAuth parameters,
    malformed JSON) never reaches the log, not even inside a traceback."""
    import json

    import httpx

    canary = "canary-7Hq2LwZ"
    org = make_org()
    headers = {"Authorization": f"Bearer {org.token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}

    def rpc(method: str, params: dict, id_: object = 1) -> bytes:
        return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode()

    def tool(name: str, arguments: dict) -> bytes:
        return rpc("tools/call", {"name": name, "arguments": arguments})

    bodies = [
        tool("crm_clients_create_lead", {"business_name": f"{canary}\u0000"}),
        tool("crm_clients_create_lead", {"business_name": canary * 10_000}),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"crm_clients_get","arguments":'
         '{"client_id":"' + canary + '\\ud800"}}}').encode(),
        tool(canary, {"x": canary}),
        tool("crm_deals_create", {"title": canary, "client_id": canary, "value": "1e999",
                                  "expected_close_date": "0001-01-01T00:00:00+14:00"}),
        tool("crm_projects_create", {"name": canary, "budget": 9223372036854775808}),
        tool("crm_clients_list", {"cursor": canary, "tag": f"{canary}\u0000"}),
        tool("crm_wiki_search", {"q": f'"{canary}" OR -{canary}'}),
        rpc(canary, {"x": canary}),
        rpc("tools/list", {"cursor": canary}, id_=canary),
        rpc("initialize", {"protocolVersion": canary, "capabilities": {}, "clientInfo": {"name": canary, "version": canary}}),
        ("{" + canary).encode(),
    ]
    statuses = [httpx.post(server.mcp_url, content=b, headers=headers, timeout=30).status_code for b in bodies]
    statuses += [
        httpx.get(f"{server.base_url}/authorize", params={"client_id": canary, "redirect_uri": f"https://{canary}.x/cb",
                                                          "response_type": "code", "state": canary}).status_code,
        httpx.post(f"{server.base_url}/token", data={"grant_type": canary, "code": canary, "client_id": canary}).status_code,
        httpx.post(f"{server.base_url}/register", json={"client_name": canary,
                                                        "redirect_uris": [f"https://{canary}.x/cb\u0000"]}).status_code,
        httpx.post(f"{server.base_url}/revoke", data={"token": canary}).status_code,
        httpx.get(f"{server.base_url}/attachments/{canary}", params={"sig": canary}).status_code,
        httpx.post(server.mcp_url, content=tool("crm_users_me", {}),
                   headers={**headers, "Authorization": f"Bearer flusia_{canary}"}).status_code,
    ]
    assert all(s < 500 for s in statuses), statuses
    log = server.log_path.read_text()
    assert f"org={org.organization_id} tool=crm_clients_create_lead" in log  # the calls were logged
    assert canary not in log, [line for line in log.splitlines() if canary in line][:3]
