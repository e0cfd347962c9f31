"""W3C `traceparent` on /mcp: a valid header's trace id is stored with the cause of the events a tool call records,
answered in `traceresponse` and shown by the audit tools; an invalid one is ignored, never an error."""

from __future__ import annotations

import json
import secrets

import httpx
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from psycopg.rows import dict_row

from application.principal import parse_traceparent
from tests.mcp_helpers import call

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}


def tool(server, token: str, name: str, arguments: dict, headers: dict | list | None = None) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    extra = list(headers.items()) if isinstance(headers, dict) else (headers or [])
    return httpx.post(server.mcp_url, content=json.dumps(body), timeout=60,
                      headers=[*HEADERS.items(), ("Authorization", f"Bearer {token}"), *extra])


def cause_of(database_url: str, entity_id: str) -> dict:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT c.* FROM stored_events e JOIN event_causes c"
            " ON e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id"
            " WHERE e.originator_id = %s ORDER BY e.originator_version LIMIT 1", (entity_id,)).fetchone()


async def test_a_traced_write_stores_its_trace_id_and_the_audit_shows_it(server, make_org, database_url):
    org = make_org("Traced")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    answered: list[str] = []

    async def keep(response: httpx2.Response) -> None:
        if "traceresponse" in response.headers:
            answered.append(response.headers["traceresponse"])

    headers = {"Authorization": f"Bearer {org.token}", "traceparent": f"00-{trace_id}-{parent}-01"}
    async with httpx2.AsyncClient(headers=headers, timeout=60, event_hooks={"response": [keep]}) as http:
        async with Client(streamable_http_client(server.mcp_url, http_client=http)) as client:
            lead = await call(client, "crm_clients_create_lead", {"business_name": "Tracciata Srl"})
            history = await call(client, "crm_audit_entity_history", {"entity_id": lead["id"]})
            changes = await call(client, "crm_audit_recent_changes", {"tool": "crm_clients_create_lead"})

    cause = cause_of(database_url, lead["id"])
    assert cause["trace_id"] == trace_id and cause["parent_span_id"] == parent
    assert answered and all(a.startswith(f"00-{trace_id}-") and a.endswith("-01") for a in answered)
    spans = {a.split("-")[2] for a in answered}
    assert cause["span_id"] in spans and parent not in spans  # the server's own span for the request that wrote
    assert len(spans) == len(answered)  # one span per request

    [created] = history["items"]
    assert created["trace_id"] == trace_id and created["correlation_id"] == str(cause["correlation_id"])
    [change] = [c for c in changes["items"] if c["entity_id"] == lead["id"]]
    assert change["trace_id"] == trace_id

    # from the trace to its events (the partial index of migration 0071)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        events = conn.execute(
            "SELECT e.originator_id FROM event_causes c JOIN stored_events e"
            " ON e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id"
            " WHERE c.trace_id = %s", (trace_id,)).fetchall()
    assert {str(e["originator_id"]) for e in events} == {lead["id"]}


INVALID = [
    "01-{t}-{p}-01",                                   # another version
    "ff-{t}-{p}-01",                                   # the forbidden version
    "00-{T}-{p}-01",                                   # uppercase hex
    "00-00000000000000000000000000000000-{p}-01",      # all-zero trace id
    "00-{t}-0000000000000000-01",                      # all-zero parent id
    "00-{t}-{p}-1",                                    # short flags
    "00-{t}-{p}-01-extra",                             # trailing fields
    "00-{t}{t}-{p}-01",                                # long trace id
    "00-{t}-{p}",                                      # no flags
    "00_{t}_{p}_01",                                   # other separators
    "garbage \u00e9",                                  # not even the shape
    "",
]


@pytest.mark.parametrize("value", INVALID)
async def test_an_invalid_traceparent_is_ignored(server, make_org, database_url, value):
    org = make_org()
    t, p = secrets.token_hex(16), secrets.token_hex(8)
    header = value.format(t=t, p=p, T=t.upper())
    r = tool(server, org.token, "crm_clients_create_lead", {"business_name": "Senza traccia"},
             [("traceparent", header.encode("utf-8"))])
    assert r.status_code == 200 and "traceresponse" not in r.headers
    result = r.json()["result"]
    assert not result.get("isError"), result
    cause = cause_of(database_url, result["structuredContent"]["id"])
    assert cause["trace_id"] is None and cause["span_id"] is None and cause["parent_span_id"] is None


async def test_two_traceparent_headers_are_ignored(server, make_org, database_url):
    org = make_org()
    first, second = (f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01" for _ in range(2))
    r = tool(server, org.token, "crm_clients_create_lead", {"business_name": "Due tracce"},
             [("traceparent", first), ("traceparent", second)])
    assert r.status_code == 200 and "traceresponse" not in r.headers
    assert cause_of(database_url, r.json()["result"]["structuredContent"]["id"])["trace_id"] is None


def test_traceparent_parsing():
    t, p = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    trace = parse_traceparent(f"00-{t}-{p}-01")
    assert (trace.trace_id, trace.parent_id, trace.flags) == (t, p, "01")
    assert len(trace.span_id) == 16 and trace.span_id != p and int(trace.span_id, 16) != 0
    assert trace.response_header() == f"00-{t}-{trace.span_id}-01"
    assert parse_traceparent(f"00-{t}-{p}-00").flags == "00"  # not sampled: still a trace
    for value in (None, "", f"00-{t.upper()}-{p}-01", f"00-{t}-{p}-01 ", f"0-{t}-{p}-01", f"00-{t}-{p}-0g"):
        assert parse_traceparent(value) is None
