"""Talking to the real server as an assistant does: the `mcp` SDK client over streamable HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


@asynccontextmanager
async def mcp_client(url: str, token: str, *, mode: str = "auto", query: str = "") -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        target = f"{url}?{query}" if query else url
        async with Client(streamable_http_client(target, http_client=http), mode=mode) as client:
            yield client


class ToolFailed(AssertionError):
    def __init__(self, name: str, error: dict[str, Any]) -> None:
        super().__init__(f"{name} failed: {error}")
        self.error = error


async def call(client: Client, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call a tool and return its structuredContent; raise ToolFailed with the tool error otherwise."""
    result = await client.call_tool(name, arguments or {})
    if result.is_error:
        raise ToolFailed(name, json.loads(result.content[0].text)["error"])
    assert result.structured_content is not None, f"{name} returned no structuredContent"
    assert json.loads(result.content[0].text) == result.structured_content, "text rendering must mirror structuredContent"
    return result.structured_content


async def call_error(client: Client, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call a tool that must fail; return its error object ({code, message, field?})."""
    result = await client.call_tool(name, arguments or {})
    assert result.is_error, f"{name} unexpectedly succeeded: {result.structured_content}"
    return json.loads(result.content[0].text)["error"]


async def all_tools(client: Client) -> list[Any]:
    tools, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools
