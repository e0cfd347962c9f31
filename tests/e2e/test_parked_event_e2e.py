"""Through the real server: an event of organization A that cannot be projected (a NUL byte appended behind the
tools' back) leaves organization B's writes and reads working, A's writes answer within 2 s that they were
stored, and `/readyz` reports the parked event without naming any organization."""

from __future__ import annotations

import statistics
import time

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from tests.conftest import start_server
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_a_poisoned_organization_does_not_hold_up_another(fresh_database_url):
    from application.store import EventStore
    from domain.clients import Client

    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        a = identity.create_organization(conn, "Alfa", "a@alfa.example", "A")
        b = identity.create_organization(conn, "Beta", "b@beta.example", "B")
    srv = start_server(fresh_database_url)
    try:
        async def b_round(client) -> float:
            started = time.perf_counter()
            lead = await call(client, "crm_clients_create_lead", {"business_name": "Beta lead"})
            assert (await call(client, "crm_clients_get", {"client_id": lead["id"]}))["id"] == lead["id"]
            return time.perf_counter() - started

        async with mcp_client(srv.mcp_url, b.token) as client_b:
            before = [await b_round(client_b) for _ in range(5)]
            store = EventStore(fresh_database_url)
            try:
                bad = Client.create_lead(a.organization_id, {"business_name": "nul\x00byte"}, None, a.user_id)
                store.save(bad, organization_id=a.organization_id)
            finally:
                store.close()
            after = [await b_round(client_b) for _ in range(5)]
        print(f"B create+get p50 before {statistics.median(before) * 1000:.1f} ms, "
              f"after A's poisoned event {statistics.median(after) * 1000:.1f} ms")

        async with mcp_client(srv.mcp_url, a.token) as client_a:
            started = time.perf_counter()
            err = await call_error(client_a, "crm_clients_create_lead", {"business_name": "Alfa lead"})
            assert time.perf_counter() - started < 5  # answered after the 2 s wait, not the old 15 s
            assert err["code"] == "read_model_degraded" and err["stored"] is True and err["ids"]
            assert (await call_error(client_a, "crm_clients_list"))["code"] == "read_model_degraded"

        ready = httpx.get(f"{srv.base_url}/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["consumers"]["clients"]["parked"] == 1
        assert str(a.organization_id) not in ready.text and str(b.organization_id) not in ready.text
        assert httpx.get(f"{srv.base_url}/healthz").json() == {"status": "ok"}
    finally:
        srv.process.terminate()
        srv.process.wait(10)
