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
