"""A newcomer's first start: an empty database gets a demo organization whose admin token is printed once."""

from __future__ import annotations

import re
import time

import httpx
import psycopg
from psycopg.rows import dict_row
import pytest

from application.oauth import authenticate
from tests.conftest import start_server
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_first_start_prints_a_working_admin_token_once(fresh_database_url):
    srv = start_server(fresh_database_url)
    try:
        deadline = time.monotonic() + 20
        while "flusia_" not in srv.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        printed = srv.log_path.read_text()
        token = re.search(r"(flusia_[A-Za-z0-9_\-]{32,})", printed).group(1)
        password = re.search(r"admin@example.com / (\S+)", printed).group(1)
        with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:  # the printed login works for OAuth
            assert len(authenticate(conn, "admin@example.com", password)) == 1
        async with mcp_client(srv.mcp_url, token) as client:
            me = await call(client, "crm_users_me")
        assert me["organization"]["name"] == "Demo Organization" and me["user"]["role"] == "admin"
        assert httpx.get(f"{srv.base_url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{srv.base_url}/readyz").json()
        assert ready["status"] == "ready" and set(ready["consumers"]) >= {"clients", "tasks", "notes"}
    finally:
        srv.process.terminate()
        srv.process.wait(10)
    again = start_server(fresh_database_url)  # a second start must not create or print anything new
    try:
        time.sleep(1.0)
        assert "flusia_" not in again.log_path.read_text() and "admin@example.com /" not in again.log_path.read_text()
    finally:
        again.process.terminate()
        again.process.wait(10)
