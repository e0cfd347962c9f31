"""The MCP server, generated from the operation registry. No tool is written by hand here.

Who calls and which tools this connection asked for arrive through context variables set by the HTTP
layer for each request (the server is stateless: any worker answers any request).
"""

from __future__ import annotations

import base64
import json
import os
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from application.errors import PermissionDenied, ToolError
from application.principal import Principal
from application.registry import Operation, Registry
from application.runner import ToolRunner

TOOLS_PAGE_SIZE = 200
SERVER_INSTRUCTIONS = (
    "Flusia CRM. Resolve people with crm_users_list and leads/clients with crm_clients_search before acting on them; "
    "ids returned by one tool are the arguments of the next. Dates are YYYY-MM-DD in the organization's timezone "
    "(crm_users_me tells it). Write tools accept idempotency_key so a retry never does the work twice."
)


@dataclass(frozen=True)
class ToolFilter:
    """What this connection narrowed the tool list to (`/mcp?toolsets=clients,tasks&readonly=1`)."""

    toolsets: frozenset[str] | None = None
    read_only: bool = False

    def admits(self, op: Operation, default_toolsets: frozenset[str] = frozenset()) -> bool:
        """Without a choice, the toolsets listed by default; with one, exactly those chosen."""
        chosen = op.toolset in self.toolsets if self.toolsets is not None else op.toolset in default_toolsets
        return chosen and (not self.read_only or op.read_only)


current_principal: ContextVar[Principal] = ContextVar("current_principal")
current_filter: ContextVar[ToolFilter] = ContextVar("current_filter", default=ToolFilter())


@cache
def tool_of(op: Operation) -> types.Tool:
    return types.Tool(
        name=op.name,
        title=op.title,
        description=op.description,
        inputSchema=op.input_schema(),
        outputSchema=op.output_schema(),
        annotations=types.ToolAnnotations(**op.annotations()),  # the title is the tool's own, not repeated here
        _meta={"io.flusia/toolset": op.toolset},
    )


@cache
def toolsets_meta(registry: Registry) -> list[dict[str, Any]]:
    """Every toolset once per page (names for `/mcp?toolsets=`), rather than its description in every tool."""
    return [{"name": t.name, "title": t.title, "description": t.description, "default": t.default}
            for t in registry.toolsets.values()]


def _cursor_offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(cursor.encode()).decode().removeprefix("tools:"))
        if offset < 0:
            raise ValueError
        return offset
    except Exception:
        raise MCPError(code=INVALID_PARAMS, message="invalid cursor for tools/list") from None


def render(result: dict[str, Any]) -> str:
    """The text twin of structuredContent, for clients that only read text."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)


def images(result: dict[str, Any]) -> list[types.ImageContent]:
    """A tool returns an image by an output field `image: {mime_type, data_base64}` (see crm_qr_codes_get_image):
    besides the text twin, the client gets it as MCP image content it can show."""
    image = result.get("image") if isinstance(result, dict) else None
    if isinstance(image, dict) and isinstance(image.get("data_base64"), str) and isinstance(image.get("mime_type"), str):
        return [types.ImageContent(type="image", data=image["data_base64"], mimeType=image["mime_type"])]
    return []


def build_server(registry: Registry, runner: ToolRunner, version: str) -> Server:
    defaults = frozenset(t.name for t in registry.toolsets.values() if t.default)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        principal = current_principal.get()
        tool_filter = current_filter.get()
        ops = [op for op in registry.select(principal.grants) if tool_filter.admits(op, defaults)]
        start = _cursor_offset(params.cursor if params else None)
        page = ops[start : start + TOOLS_PAGE_SIZE]
        more = start + TOOLS_PAGE_SIZE < len(ops)
        next_cursor = base64.urlsafe_b64encode(f"tools:{start + TOOLS_PAGE_SIZE}".encode()).decode() if more else None
        return types.ListToolsResult(tools=[tool_of(op) for op in page], nextCursor=next_cursor,
                                     _meta={"io.flusia/toolsets": toolsets_meta(registry)})

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        principal = current_principal.get()
        op = registry.get(params.name)
        try:
            if op is not None and not current_filter.get().admits(op, defaults):
                raise PermissionDenied(
                    f"{op.name} is outside this connection's tool selection (toolsets/readonly in the /mcp URL)",
                    code="tool_not_enabled",
                )
            result = await runner.call(principal, params.name, params.arguments)
        except ToolError as e:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=render({"error": e.as_dict()}))], isError=True
            )
        return types.CallToolResult(content=[types.TextContent(type="text", text=render(result)), *images(result)],
                                    structuredContent=result)

    server = Server(
        "flusia-crm",
        version=version,
        title="Flusia CRM",
        instructions=SERVER_INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        # The SDK checks Mcp-Param-* headers of 2026-07-28 calls against the tool's schema; without this lookup
        # it would run the whole tools/list handler on every call to find one schema.
        get_tool_input_schema=lambda name: tool_of(op).input_schema if (op := registry.get(name)) else None,
    )
    if not (os.environ.get("OTEL_TRACES_EXPORTER") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        # The SDK wraps every message in an OpenTelemetry span; with no exporter configured that is pure cost
        # on every call (our own log line per tool call stays). Configure an exporter to keep the spans.
        server.middleware = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server
