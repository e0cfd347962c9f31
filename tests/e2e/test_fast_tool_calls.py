"""A plain `tools/call` is answered by interfaces/mcp_fast.py; every other POST by the SDK's session manager. Both
must answer byte for byte alike: the same call is sent once plainly and once with the method spelled
`"tools\\/call"` (the same JSON string, which the fast path's byte check does not recognise), and the answers of a
result, a tool error, an unknown tool and malformed params are compared."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}


def post(server, token: str, body: str) -> httpx.Response:
    return httpx.post(server.mcp_url, headers={**HEADERS, "Authorization": f"Bearer {token}"}, content=body.encode())


def both(server, token: str, params: dict, request_id: int = 7) -> tuple[httpx.Response, httpx.Response]:
    plain = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
    through_sdk = plain.replace('"tools/call"', '"tools\\/call"')
    assert json.loads(through_sdk) == json.loads(plain) and '"tools/call"' not in through_sdk
    return post(server, token, plain), post(server, token, through_sdk)


@pytest.mark.parametrize("params", [
    {"name": "crm_pipelines_list", "arguments": {}},
    {"name": "crm_clients_get", "arguments": {"client_id": "not-a-uuid"}},
    {"name": "crm_clients_get", "arguments": {"client_id": "00000000-0000-4000-8000-000000000000"}},
    {"name": "crm_no_such_tool", "arguments": {}},
    {"name": "crm_pipelines_list", "arguments": "not an object"},
    {"arguments": {}},
], ids=["result", "invalid-argument", "not-found", "unknown-tool", "arguments-not-an-object", "no-name"])
async def test_the_fast_path_answers_exactly_as_the_sdk(server, make_org, params):
    org = make_org()
    fast, sdk = both(server, org.token, params)
    assert fast.status_code == sdk.status_code == 200
    assert fast.headers["content-type"] == sdk.headers["content-type"] == "application/json"
    assert fast.json() == sdk.json()
    assert fast.content == sdk.content


async def test_what_the_fast_path_does_not_take_still_gets_the_sdks_answer(server, make_org):
    org = make_org()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "crm_users_me"}})
    refused = httpx.post(server.mcp_url, content=body.encode(), headers={
        "Authorization": f"Bearer {org.token}", "Accept": "text/html", "Content-Type": "application/json"})
    assert refused.status_code == 406  # the SDK's Accept rule
    notification = post(server, org.token, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    assert notification.status_code == 202
    broken = post(server, org.token, '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ')
    assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700
