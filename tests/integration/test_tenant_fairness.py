"""No tenant can hold the others up: statement timeouts, a per-organization limit on concurrent calls, and a
read whose caller disconnected is cancelled in the database.

A slow read tool is declared for these tests only (and removed after): `SELECT pg_sleep(...)` stands for any
expensive query, which makes the behaviour deterministic without large data sets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
import httpx
import msgspec
import psycopg
import pytest
import uvicorn
from psycopg.rows import dict_row

from application import identity
from application.errors import ToolError
from application.registry import Operation
from application.shapes import Query
from tests.conftest import free_port

SLOW_TOOL = "crm_stats_test_sleep"


class SleepFor(Query, kw_only=True):
    """Test only: sleep in the database."""

    seconds: float = 1.0


def _sleep(q: SleepFor, ctx) -> dict:
    ctx.conn.execute("SELECT pg_sleep(%s)", (q.seconds,))
    return {"slept": q.seconds}


@pytest.fixture
def slow_tool(runtime) -> Iterator[str]:
    runtime.registry.add(Operation(SLOW_TOOL, "query", SleepFor, dict, _sleep, returns=dict))
    try:
        yield SLOW_TOOL
    finally:
        runtime.registry._ops.pop(SLOW_TOOL)


def principal_of(url: str, name: str):
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        created = identity.create_organization(conn, name, f"admin@{name.lower()}.example", "Admin")
        return identity.principal_for_token(conn, created.token), created.token


def sleeping_backends(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%%'"
                            " AND pid <> pg_backend_pid()").fetchone()[0]


def test_a_statement_over_the_timeout_is_stopped_with_a_clear_error(runtime, slow_tool, database_url, monkeypatch):
    principal, _ = principal_of(database_url, "Slow")
    monkeypatch.setattr(runtime.runner, "statement_timeout_ms", 300)
    with runtime.pool.connection() as conn:  # the tool pool's own setting is what stops it
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "5s"
    with pytest.raises(ToolError) as e:
        anyio.run(runtime.runner.call, principal, slow_tool, {"seconds": 6})
    assert e.value.code == "timeout" and "nothing was changed" in e.value.message


def test_one_organizations_burst_queues_behind_itself(runtime, slow_tool, database_url, monkeypatch):
    monkeypatch.setattr(runtime.runner, "org_concurrency", 2)
    monkeypatch.setattr(runtime.runner, "_org_limiters", {})
    a, _ = principal_of(database_url, "Burst")
    b, _ = principal_of(database_url, "Calm")
    finished: list[str] = []

    async def scenario() -> None:
        async def a_call(i: int) -> None:
            await runtime.runner.call(a, slow_tool, {"seconds": 0.4})
            finished.append(f"a{i}")

        async def b_call() -> None:
            await anyio.sleep(0.1)  # A's burst is already queued
            await runtime.runner.call(b, "crm_clients_list", {})
            finished.append("b")

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(a_call, i)
            tg.start_soon(b_call)

    anyio.run(scenario)
    # With 2 of A's calls at a time, A needs four rounds; B is answered during the first.
    assert finished.index("b") < 2, finished


def test_a_read_whose_client_disconnected_is_cancelled_in_the_database(runtime, slow_tool, database_url):
    from interfaces.http import create_app

    _, token = principal_of(database_url, "Gone")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runtime, run_projector=False), port=port, log_level="warning",
                                           loop="asyncio", http="h11"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        body = msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                    "params": {"name": slow_tool, "arguments": {"seconds": 4.5}}})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        with pytest.raises(httpx.ReadTimeout):
            answer = httpx.post(f"http://127.0.0.1:{port}/mcp", content=body, headers=headers, timeout=1.0)
            pytest.fail(f"answered before the client gave up: {answer.text[:300]}")
        deadline = time.monotonic() + 2.5
        while sleeping_backends(database_url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeping_backends(database_url) == 0, "the query kept running after its client left"
    finally:
        server.should_exit = True
        thread.join(10)
