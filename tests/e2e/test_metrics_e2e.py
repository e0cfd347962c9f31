"""`/metrics` of the real server with two API workers: tool calls, durations, auth failures, pools and consumers,
summed over the worker processes, with no tenant data, and answered only to loopback clients or the metrics token."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from interfaces.database import create_database, drop_database
from tests.conftest import ServerProcess, flusia, start_server
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def served(admin_url: str) -> Iterator[tuple[ServerProcess, dict]]:
    from application.migrate import migrate

    name = f"flusia_metrics_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    migrate(url)
    org = flusia("org", "create", "--name", "Metriche Srl", "--admin-email", "ops@metriche.example",
                 env={"DATABASE_URL": url})
    srv = start_server(url, {"FLUSIA_WORKERS": "2", "FLUSIA_METRICS_TOKEN": METRICS_TOKEN})
    try:
        yield srv, org
    finally:
        srv.process.terminate()
        srv.process.wait(30)
        drop_database(admin_url, name)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_metrics_after_tool_calls(served):
    srv, org = served
    leads = 6
    for i in range(leads):  # a session each: new connections, which either worker may accept
        async with mcp_client(srv.mcp_url, org["token"]) as client:
            await call(client, "crm_clients_create_lead", {"business_name": f"Metriche {i} Srl"})
    async with mcp_client(srv.mcp_url, org["token"]) as client:
        await call(client, "crm_clients_search", {"q": "Metriche"})
        await call_error(client, "crm_no_such_tool_" + uuid.uuid4().hex[:8], {})
    assert httpx.post(srv.mcp_url, headers={"Authorization": "Bearer flusia_" + "x" * 40}, json={}).status_code == 401
    assert httpx.post(srv.mcp_url, json={}).status_code == 401

    deadline = time.monotonic() + 30  # pool gauges are sampled every second in each process
    while True:
        response = httpx.get(f"{srv.base_url}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
        if value(found, "flusia_db_pool_max_connections", pool="tools") or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    # every call counted once, whichever worker ran it
    assert value(found, "flusia_tool_calls_total", tool="crm_clients_create_lead", status="ok") == leads
    assert value(found, "flusia_tool_calls_total", tool="crm_clients_search", status="ok") == 1
    unknown = [k for k in found if k[0] == "flusia_tool_calls_total" and ("tool", "<unknown>") in k[1]]
    assert len(unknown) == 1 and found[unknown[0]] == 1
    assert not any("crm_no_such_tool" in str(k) for k in found)
    assert value(found, "flusia_tool_call_duration_seconds_count", tool="crm_clients_create_lead") == leads
    assert value(found, "flusia_tool_call_duration_seconds_bucket", tool="crm_clients_create_lead", le="+Inf") == leads
    assert value(found, "flusia_tool_call_duration_seconds_sum", tool="crm_clients_create_lead") > 0

    assert value(found, "flusia_auth_failures_total", reason="invalid_token") == 1
    assert value(found, "flusia_auth_failures_total", reason="missing_token") == 1

    assert value(found, "flusia_event_store_head") >= leads
    assert value(found, "flusia_consumer_lag_events", consumer="clients") is not None
    assert value(found, "flusia_consumer_parked_events", consumer="clients") == 0
    assert value(found, "flusia_consumer_position", consumer="clients") >= leads

    # the pools of both API workers (20 each by default) and of the consumers' process (8)
    assert value(found, "flusia_db_pool_max_connections", pool="tools") >= 40
    assert value(found, "flusia_db_pool_connections", pool="tools", state="idle") is not None
    assert value(found, "flusia_db_pool_connections", pool="tools", state="in_use") is not None
    assert value(found, "flusia_db_pool_requests_total", pool="tools") > 0

    # no tenant data: no organization, user or token id anywhere
    for secret in (org["organization_id"], org["user_id"], org["token_id"], org["token"]):
        assert str(secret) not in response.text


def test_metrics_answer_loopback_or_the_token(served):
    srv, _ = served
    proxied = {"X-Forwarded-For": "203.0.113.7"}  # as a reverse proxy on this host would forward a remote client
    refused = httpx.get(f"{srv.base_url}/metrics", headers=proxied)
    assert refused.status_code == 401 and "FLUSIA_METRICS_TOKEN" in refused.json()["error_description"]
    wrong = httpx.get(f"{srv.base_url}/metrics", headers={**proxied, "Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.get(f"{srv.base_url}/metrics", headers={**proxied, "Authorization": f"Bearer {METRICS_TOKEN}"})
    assert ok.status_code == 200 and "flusia_auth_failures_total" in ok.text
    assert value(samples(ok.text), "flusia_auth_failures_total", reason="metrics") == 2
