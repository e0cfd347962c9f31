"""The /mcp endpoint as clients see it: auth, protocol versions, tool listing, errors, permissions, tenancy."""

from __future__ import annotations

import json
import uuid

import httpx
import psycopg
import pytest

from application import identity
from application.inventory import registry
from application.permissions import RESOURCES
from tests.conftest import start_server
from tests.mcp_helpers import all_tools, call, call_error, mcp_client
from tests.tool_args import sample_args

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def rpc(method: str, params: dict | None = None, id_: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": method, **({"params": params} if params is not None else {})}


def post(server, token: str | None, body, *, version: str = "2025-11-25", raw: bytes | None = None) -> httpx.Response:
    headers = {**MCP_HEADERS, "MCP-Protocol-Version": version}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(server.mcp_url, content=raw if raw is not None else json.dumps(body), headers=headers, timeout=30)


# -- authentication ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", [None, "Bearer flusia_not-a-real-token-000000000000000000000", "Basic abc", "Bearer x"])
async def test_missing_or_bad_token_is_401_pointing_at_resource_metadata(server, auth):
    headers = {**MCP_HEADERS, **({"Authorization": auth} if auth else {})}
    r = httpx.post(server.mcp_url, json=rpc("tools/list"), headers=headers)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{server.base_url}/.well-known/oauth-protected-resource"' in challenge
    meta = httpx.get(f"{server.base_url}/.well-known/oauth-protected-resource").json()
    assert meta["resource"] == server.mcp_url and meta["authorization_servers"] == [server.base_url]
    assert httpx.get(f"{server.base_url}/.well-known/oauth-protected-resource/mcp").json() == meta


async def test_revoked_token_and_inactive_user_are_refused(server, make_org, database_url):
    org = make_org()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE organization_id = %s", (org.organization_id,))
    assert post(server, org.token, rpc("tools/list")).status_code == 401


# -- protocol versions -----------------------------------------------------------------------------------------
async def test_protocol_2025_06_18_initialize_and_call(server, make_org):
    org = make_org()
    init = post(server, org.token, rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                      "clientInfo": {"name": "raw", "version": "0"}}), version="2025-06-18")
    assert init.status_code == 200, init.text
    assert init.json()["result"]["protocolVersion"] == "2025-06-18"
    listed = post(server, org.token, rpc("tools/list", {}, 2), version="2025-06-18").json()
    assert listed["result"]["tools"] and listed["result"]["nextCursor"]
    called = post(server, org.token, rpc("tools/call", {"name": "crm_users_me", "arguments": {}}, 3), version="2025-06-18").json()
    assert called["result"]["structuredContent"]["organization"]["id"] == str(org.organization_id)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_sdk_client_in_each_protocol_era(server, make_org, mode):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token, mode=mode) as client:
        me = await call(client, "crm_users_me")
        assert me["user"]["id"] == str(org.user_id) and "clients:delete" in me["permissions"]
        assert me["auth"] == "api_token"


# -- tools/list --------------------------------------------------------------------------------------------------
async def test_tools_list_is_paginated_and_complete(server, make_org):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token) as client:
        first = await client.list_tools()
        tools = await all_tools(client)
    from interfaces.mcp_server import TOOLS_PAGE_SIZE

    assert len(first.tools) == TOOLS_PAGE_SIZE and first.next_cursor
    assert sorted(t.name for t in tools) == sorted(op.name for op in registry if registry.toolsets[op.toolset].default)
    assert len({t.name for t in tools}) == len(tools)
    me = next(t for t in tools if t.name == "crm_clients_create_lead")
    assert not me.annotations.read_only_hint and me.annotations.destructive_hint is False  # read_only: default, unsent
    assert me.output_schema["type"] == "object" and "business_name" in me.input_schema["required"]


async def test_a_repeated_list_is_answered_alike_with_its_own_request_id(server, make_org):
    """tools/list is served from memory after the first time: same tools, the request's own id, per caller."""
    org = make_org()
    token = org.token
    bodies = [post(server, token, rpc("tools/list", {}, id_)).json() for id_ in (7, "abc", 9)]
    assert [b["id"] for b in bodies] == [7, "abc", 9]
    assert bodies[0]["result"] == bodies[1]["result"] == bodies[2]["result"]
    second = post(server, token, rpc("tools/list", {"cursor": bodies[0]["result"]["nextCursor"]}, 10)).json()
    assert second["id"] == 10 and second["result"]["tools"] != bodies[0]["result"]["tools"]


async def test_toolsets_and_read_only_narrow_the_list_and_the_calls(server, make_org):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token, query="toolsets=clients,users&readonly=1") as client:
        names = {t.name for t in await all_tools(client)}
        assert names == {op.name for op in registry  # search and fetch are in every connection
                         if op.toolset in {"clients", "users", "connector"} and op.kind == "query"}
        err = await call_error(client, "crm_clients_create_lead", {"business_name": "X"})
        assert err["code"] == "tool_not_enabled"
        err = await call_error(client, "crm_tasks_list")
        assert err["code"] == "tool_not_enabled"


async def test_list_shows_only_what_the_token_allows(server, make_org, db):
    org = make_org()
    token, _ = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r", "tasks": "rw"})
    async with mcp_client(server.mcp_url, token) as client:
        names = {t.name for t in await all_tools(client)}
    granted = {"clients:read", "tasks:read", "tasks:write"}
    assert names == {op.name for op in registry if set(op.permissions) <= granted and not op.meta} | {"search", "fetch"}
    assert "crm_clients_list" in names and "crm_tasks_complete" in names
    assert "crm_clients_list_deals" not in names and "crm_tasks_create" not in names  # they also read deals, ...


# -- malformed input -----------------------------------------------------------------------------------------------
async def test_malformed_requests_never_get_a_500(server, make_org):
    org = make_org()
    cases = [
        post(server, org.token, None, raw=b"{not json"),
        post(server, org.token, None, raw=b"[]"),
        post(server, org.token, None, raw=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}'),
        post(server, org.token, rpc("tools/call", {"name": 42, "arguments": []})),
        post(server, org.token, rpc("tools/call", {"name": "crm_clients_create_lead", "arguments": {"business_name": "x" * 3_000_000}})),
        post(server, org.token, None, raw=b"\xff\xfe\x00"),
        post(server, org.token, rpc("tools/list", {"cursor": "%%%garbage"})),
        post(server, org.token, rpc("no/such/method")),
    ]
    assert all(r.status_code < 500 for r in cases), [(r.status_code, r.text[:200]) for r in cases]


async def test_bad_arguments_name_the_field_and_write_nothing(server, make_org, database_url):
    org = make_org()
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT count(*) FROM stored_events").fetchone()[0]
    async with mcp_client(server.mcp_url, org.token) as client:
        cases = {
            "business_name": {"business_name": 12},
            "email": {"business_name": "Ok", "email": "not-an-email"},
            "address.city": {"business_name": "Ok", "address": {"city": "x" * 500}},
            "assigned_to": {"business_name": "Ok", "assigned_to": "mario"},
            "colour": {"business_name": "Ok", "colour": "red"},
            "tags[0]": {"business_name": "Ok", "tags": [""]},
        }
        for field, args in cases.items():
            err = await call_error(client, "crm_clients_create_lead", args)
            assert err["code"] == "invalid_arguments" and err["field"] == field, err
            assert field.split("[")[0].split(".")[0] in err["message"]
        err = await call_error(client, "crm_clients_create_lead", {})
        assert err == {"code": "invalid_arguments", "field": "business_name",
                       "message": "Invalid `business_name`: required argument is missing"}
        err = await call_error(client, "crm_clients_assign", {"client_id": str(uuid.uuid4()), "user_id": str(org.user_id)})
        assert err["code"] == "not_found" and err["field"] == "client_id"
        err = await call_error(client, "crm_no_such_tool")
        assert err["code"] == "unknown_tool"
        err = await call_error(client, "crm_clients_list", {"cursor": "bm90LWEtY3Vyc29y"})
        assert err["field"] == "cursor"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM stored_events").fetchone()[0] == before


# -- permissions -------------------------------------------------------------------------------------------------------
async def test_permission_matrix_every_tool(server, make_org, db):
    """Without any one permission a tool needs (on its own resource, or on one it reads or changes) the call is
    refused naming that permission; with exactly the permissions it needs, it is not refused."""
    org = make_org()
    everything = {r: "rwd" for r in RESOURCES}
    refused_without: dict[tuple[str, str], list] = {}
    allowed_with: dict[frozenset, list] = {}
    for op in registry:
        for need in op.needs:
            refused_without.setdefault(need, []).append(op)
        allowed_with.setdefault(frozenset(op.needs), []).append(op)

    def token(grants: dict[str, str]) -> str:
        return identity.create_token(db, org.organization_id, org.user_id, grants)[0]

    for (resource, action), ops in refused_without.items():
        lacking = {**everything, resource: everything[resource].replace(action[0], "")}
        async with mcp_client(server.mcp_url, token(lacking), mode="legacy") as client:
            for op in ops:
                err = await call_error(client, op.name, {})
                assert err["code"] == "permission_denied" and f"{resource}:{action}" in err["message"], (op.name, err)
    for needs, ops in allowed_with.items():
        grants: dict[str, str] = {}
        for resource, action in needs:
            grants[resource] = grants.get(resource, "") + action[0]
        async with mcp_client(server.mcp_url, token(grants), mode="legacy") as client:
            for op in ops:
                result = await client.call_tool(op.name, {})
                if result.is_error:
                    assert json.loads(result.content[0].text)["error"]["code"] != "permission_denied", op.name


async def test_viewer_role_caps_a_broad_token(server, make_org, db):
    org = make_org()
    viewer = identity.create_user(db, org.organization_id, f"v-{uuid.uuid4().hex[:6]}@example.com", "Vera Viewer", "viewer")
    token, _ = identity.create_token(db, org.organization_id, viewer, {r: "rwd" for r in RESOURCES})
    async with mcp_client(server.mcp_url, token) as client:
        err = await call_error(client, "crm_clients_create_lead", {"business_name": "No"})
        assert err["code"] == "permission_denied" and "clients:write" in err["message"]
        assert (await call(client, "crm_clients_list"))["items"] is not None


# -- tenancy -------------------------------------------------------------------------------------------------------------
def tenancy_args(op, ids: dict[str, str]) -> dict:
    """Arguments for any tool, pointing every id at organization B's entities."""
    return sample_args(op, {**ids, "duplicate_ids": [ids["client_id"]], "survivor_id": ids["client_id"],
                            "assigned_to": ids["user_id"], "assignee_id": ids["user_id"]})


async def test_organizations_are_isolated_for_every_tool(server, make_org):
    a, b = make_org("A"), make_org("B")
    async with mcp_client(server.mcp_url, b.token) as client_b:
        lead = await call(client_b, "crm_clients_create_lead", {"business_name": "Segreto di B", "vat_number": "IT55555555555",
                                                                "email": "segreto@b.it"})
        contact = (await call(client_b, "crm_clients_add_contact", {"client_id": lead["id"], "name": "Persona B"}))
        note = await call(client_b, "crm_clients_add_note", {"client_id": lead["id"], "body": "nota di B"})
        rec = await call(client_b, "crm_clients_add_recording", {"client_id": lead["id"], "media_url": "https://b/x.mp3", "duration_seconds": 5})
        task = await call(client_b, "crm_tasks_create", {"title": "compito di B", "client_id": lead["id"]})
        before = await call(client_b, "crm_clients_get", {"client_id": lead["id"]})
    ids = {"client_id": lead["id"], "contact_id": contact["id"], "note_id": note["id"], "recording_id": rec["id"],
           "task_id": task["id"], "user_id": str(b.user_id)}
    secrets = set(ids.values()) | {"Segreto di B", "nota di B", "compito di B", "Persona B"}
    async with mcp_client(server.mcp_url, a.token) as client_a:
        for op in (op for op in registry if not op.meta):  # discovery runs these same tools
            args = tenancy_args(op, ids)
            result = await client_a.call_tool(op.name, args)
            text = result.content[0].text
            if result.is_error:
                error = json.loads(text)["error"]
                assert error["code"] in {"not_found", "invalid_arguments", "rule_violation"}, (op.name, error)
            leaked = [s for s in secrets if s in text and s not in json.dumps(args)]
            assert not leaked, (op.name, leaked)
    async with mcp_client(server.mcp_url, b.token) as client_b:
        after = await call(client_b, "crm_clients_get", {"client_id": lead["id"]})
    assert {k: v for k, v in after.items()} == before


async def test_browser_clients_get_cors_headers(server, make_org):
    org = make_org()
    origin = {"Origin": "http://localhost:6274"}
    pre = httpx.options(server.mcp_url, headers={**origin, "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code < 300 and pre.headers["access-control-allow-origin"] == "*"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    unauth = httpx.post(server.mcp_url, json=rpc("tools/list"), headers={**MCP_HEADERS, **origin})
    assert unauth.status_code == 401 and "www-authenticate" in unauth.headers["access-control-expose-headers"].lower()
    ok = httpx.post(server.mcp_url, json=rpc("tools/list"), headers={**MCP_HEADERS, **origin, "Authorization": f"Bearer {org.token}",
                                                                      "MCP-Protocol-Version": "2025-11-25"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "*"
    meta = httpx.get(f"{server.base_url}/.well-known/oauth-protected-resource", headers=origin)
    assert meta.headers["access-control-allow-origin"] == "*"


async def test_pages_of_other_sites_and_rebound_host_names_are_refused(server, make_org):
    """DNS rebinding: a page on another site, or one whose name resolves to this machine, must not drive the server
    through the user's browser (MCP: servers MUST validate Origin). Without a token it is the usual 401 challenge."""
    org = make_org()
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {org.token}", "MCP-Protocol-Version": "2025-11-25"}
    for bad in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Host": "evil.example"},
                {"Host": "evil.example:80", "Origin": "http://evil.example"}):
        r = httpx.post(server.mcp_url, json=rpc("tools/list"), headers={**headers, **bad})
        assert r.status_code == 403, (bad, r.status_code)
        assert r.json()["error"] == "forbidden_origin"
    port = server.base_url.rsplit(":", 1)[1]
    for good in ({}, {"Origin": server.base_url}, {"Origin": "http://localhost:6274"}, {"Host": f"localhost:{port}"}):
        assert httpx.post(server.mcp_url, json=rpc("tools/list"), headers={**headers, **good}).status_code == 200, good


async def test_allowed_origins_are_configurable(database_url, make_org):
    srv = start_server(database_url, {"FLUSIA_ALLOWED_ORIGINS": "https://app.example.com"})
    try:
        org = make_org()
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {org.token}", "MCP-Protocol-Version": "2025-11-25"}
        post_from = lambda origin: httpx.post(srv.mcp_url, json=rpc("tools/list"), headers={**headers, "Origin": origin})
        assert post_from("https://app.example.com").status_code == 200
        assert post_from("https://other.example.com").status_code == 403
    finally:
        srv.process.terminate()
        srv.process.wait(10)
