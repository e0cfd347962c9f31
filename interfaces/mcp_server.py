"""The MCP server, generated from the operation registry. No tool is written by hand here.

Who calls and which tools this connection asked for arrive through context variables set by the HTTP
layer for each request (the server is stateless: any worker answers any request).
"""

from __future__ import annotations

import base64
import json
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from application.errors import PermissionDenied, ToolError
from interfaces import mcp_completion, mcp_prompts
from application.principal import Principal
from application.registry import Operation, Registry
from application.runner import ToolRunner

TOOLS_PAGE_SIZE = 200
RESOURCES_PAGE_SIZE = 50
RESOURCE_URI = re.compile(r"^flusia://([a-z_]+)/([^/?#]+)$")
LABEL_FIELDS = ("business_name", "title", "name", "subject", "label", "number", "code", "domain")
SERVER_INSTRUCTIONS = (
    "Flusia CRM. Resolve people with crm_users_list and leads/clients with crm_clients_search before acting on them; "
    "ids returned by one tool are the arguments of the next. Dates are YYYY-MM-DD in the organization's timezone "
    "(crm_users_me tells it). Write tools accept idempotency_key so a retry never does the work twice. Update tools "
    "change only the fields you send; null clears an optional one. Searches rank best first; when nothing has every "
    "word, they return what matches some, marked match:'any'. "
    "Destructive tools accept preview:true: nothing changes, the answer says what would and carries a confirmation; "
    "show it to the user and, once they agree, repeat the call with confirmation=<it> to do exactly that (refused "
    "if anything it touches changed meanwhile)."
)


@dataclass(frozen=True)
class ToolFilter:
    """What this connection narrowed the tool list to (`/mcp?toolsets=clients,tasks&readonly=1`)."""

    toolsets: frozenset[str] | None = None
    read_only: bool = False

    def admits(self, op: Operation, default_toolsets: frozenset[str] = frozenset(),
               always: frozenset[str] = frozenset()) -> bool:
        """Without a choice, the toolsets listed by default; with one, those chosen; `always` toolsets in both
        (not in discovery mode: exactly the crm_tools_* tools there)."""
        if self.toolsets is not None:
            chosen = op.toolset in self.toolsets or (op.toolset in always and self.toolsets != DISCOVERY)
        else:
            chosen = op.toolset in default_toolsets
        return chosen and (not self.read_only or op.read_only)


DISCOVERY = frozenset({"tools"})
"""The selection of `?toolsets=discover`."""

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
        # The toolset, only where the name does not say it (`search`, `fetch`): crm_<toolset>_* do.
        _meta=None if op.name.startswith(f"crm_{op.toolset}_") else {"io.flusia/toolset": op.toolset},
    )


@cache
def toolsets_meta(registry: Registry) -> list[dict[str, Any]]:
    """Every toolset once per page (names for `/mcp?toolsets=`), rather than its description in every tool; only a
    toolset left out of the default selection says so (`default: false`)."""
    return [{"name": t.name, "description": t.description, **({} if t.default else {"default": False})}
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


# -- resources: entities by URI, read through their get tool ----------------------------------------------------
@dataclass(frozen=True)
class EntityResource:
    """`flusia://<toolset>/{id}`: one entity of a toolset that has a get tool, read by calling that tool (the same
    permission, tenancy and selection checks, the same answer); listed through the toolset's list tool."""

    toolset: str
    title: str
    entity: str
    id_field: str
    get: Operation
    listing: Operation | None

    @property
    def template(self) -> str:
        return f"flusia://{self.toolset}/{{id}}"

    def uri(self, entity_id: Any) -> str:
        return f"flusia://{self.toolset}/{entity_id}"


def _required(op: Operation) -> set[str]:
    return set(op.input_schema().get("required", []))


@cache
def entity_resources(registry: Registry) -> tuple[EntityResource, ...]:
    """Generated from the toolset declarations: a toolset with an entity (id argument, output) and a read tool
    taking only that id and answering that output (`crm_<toolset>_get`, or e.g. `crm_wiki_get_page`)."""
    out = []
    for toolset in registry.toolsets.values():
        if toolset.meta or not toolset.id_field or toolset.output is None:
            continue
        ops = [op for op in registry if op.toolset == toolset.name and op.kind == "query"]
        get = next((op for op in ops if op.output is toolset.output and _required(op) == {toolset.id_field}), None)
        if get is None:
            continue
        entity = toolset.entity
        names = (f"crm_{toolset.name}_list", f"crm_{toolset.name}_list_{entity.split()[-1]}s")
        listing = next((op for name in names for op in ops if op.name == name and not _required(op)
                        and {"limit", "cursor"} <= set(op.input_schema().get("properties", {}))), None)
        out.append(EntityResource(toolset.name, toolset.title, entity, toolset.id_field, get, listing))
    return tuple(out)


def _label(row: dict[str, Any], entity: str) -> str:
    for name in LABEL_FIELDS:
        value = row.get(name)
        if isinstance(value, str) and value:
            return value
    return f"{entity} {row.get('id')}"


def _resource_error(e: ToolError) -> MCPError:
    """A tool error as the JSON-RPC error of a resource request (its code and field in `data`)."""
    return MCPError(code=INVALID_PARAMS, message=e.message, data={"code": e.code, **({"field": e.field} if e.field else {})})


def _page_cursor(cursor: str | None, kind: str) -> tuple[int, str | None]:
    if not cursor:
        return 0, None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())
        if data.get("k") != kind or not isinstance(data.get("i"), int) or data["i"] < 0:
            raise ValueError
        inner = data.get("c")
        return data["i"], inner if isinstance(inner, str) else None
    except Exception:
        raise MCPError(code=INVALID_PARAMS, message=f"invalid cursor for {kind}") from None


def _next_cursor(kind: str, index: int, inner: str | None) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": kind, "i": index, "c": inner}).encode()).decode()


def build_server(registry: Registry, runner: ToolRunner, version: str) -> Server:
    defaults = frozenset(t.name for t in registry.toolsets.values() if t.default)
    always = frozenset(t.name for t in registry.toolsets.values() if t.always)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        principal = current_principal.get()
        tool_filter = current_filter.get()
        ops = [op for op in registry.select(principal.grants) if tool_filter.admits(op, defaults, always)]
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
            if op is not None and not current_filter.get().admits(op, defaults, always):
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

    def readable(principal: Principal, tool_filter: ToolFilter) -> list[EntityResource]:
        return [r for r in entity_resources(registry)
                if not r.get.missing(principal.grants) and tool_filter.admits(r.get, defaults)]

    async def list_resource_templates(ctx: Any, params: types.PaginatedRequestParams | None
                                      ) -> types.ListResourceTemplatesResult:
        templates = [types.ResourceTemplate(
            uri_template=r.template, name=r.toolset, title=r.title, mime_type="application/json",
            description=f"One {r.entity} by id, as {r.get.name} answers it ({r.id_field} = id).")
            for r in readable(current_principal.get(), current_filter.get())]
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        """The entities the token may read, toolset by toolset, each as its list tool orders them (newest first for
        most), RESOURCES_PAGE_SIZE a page; the cursor holds the toolset and that list's own cursor."""
        principal = current_principal.get()
        entries = [r for r in readable(principal, current_filter.get())
                   if r.listing is not None and not r.listing.missing(principal.grants)]
        index, inner = _page_cursor(params.cursor if params else None, "resources/list")
        found: list[types.Resource] = []
        while index < len(entries) and len(found) < RESOURCES_PAGE_SIZE:
            entry = entries[index]
            arguments: dict[str, Any] = {"limit": RESOURCES_PAGE_SIZE - len(found)}
            if inner:
                arguments["cursor"] = inner
            try:
                page = await runner.call(principal, entry.listing.name, arguments)  # type: ignore[union-attr]
            except ToolError as e:
                raise _resource_error(e) from None
            for row in page.get("items", []):
                label = _label(row, entry.entity)
                found.append(types.Resource(uri=entry.uri(row["id"]), name=label, title=label,
                                            mime_type="application/json", description=entry.title))
            inner = page.get("next_cursor")
            if not inner:
                index, inner = index + 1, None
        more = index < len(entries)
        return types.ListResourcesResult(resources=found,
                                         next_cursor=_next_cursor("resources/list", index, inner) if more else None)

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        principal = current_principal.get()
        uri = str(params.uri)
        match = RESOURCE_URI.match(uri)
        entry = next((r for r in entity_resources(registry) if match and r.toolset == match.group(1)), None)
        if match is None or entry is None:
            known = ", ".join(r.template for r in entity_resources(registry))
            raise MCPError(code=INVALID_PARAMS, message=f"unknown resource {uri!r}; resources are {known}",
                           data={"code": "invalid_arguments", "field": "uri"})
        try:
            if not current_filter.get().admits(entry.get, defaults):
                raise PermissionDenied(f"{entry.toolset} is outside this connection's tool selection (toolsets/readonly "
                                       "in the /mcp URL)", code="tool_not_enabled")
            result = await runner.call(principal, entry.get.name, {entry.id_field: match.group(2)})
        except ToolError as e:
            raise _resource_error(e) from None
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=uri, mime_type="application/json", text=render(result))])

    # -- completion -----------------------------------------------------------------------------------------
    suggest = mcp_completion.guarded(runner.call, lambda tool: (op := registry.get(tool)) is not None
                                     and current_filter.get().admits(op, defaults, always))

    async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        principal = current_principal.get()
        ref, name, typed = params.ref, params.argument.name, params.argument.value or ""
        if isinstance(ref, types.PromptReference):
            spec = next((p for p in offered(principal) if p.name == ref.name), None)
            if spec is None:
                raise MCPError(code=INVALID_PARAMS, message=f"unknown prompt {ref.name!r}")
            values = await mcp_completion.prompt_values(suggest, principal, name, typed) \
                if any(a.name == name for a in spec.arguments) else []
        else:
            match = mcp_completion.TEMPLATE.match(ref.uri)
            entry = next((r for r in entity_resources(registry) if match and r.toolset == match.group(1)), None)
            if entry is None:
                raise MCPError(code=INVALID_PARAMS, message=f"unknown resource template {ref.uri!r}")
            search = registry.get(f"crm_{entry.toolset}_search")
            values = await mcp_completion.resource_values(suggest, principal, search.name if search else None,
                                                          entry.listing.name if entry.listing else None, typed)
        return types.CompleteResult(completion=types.Completion(values=values, has_more=False))

    # -- prompts ---------------------------------------------------------------------------------------------
    def usable(principal: Principal) -> Any:
        def check(tool: str) -> bool:
            op = registry.get(tool)
            return op is not None and not op.missing(principal.grants)
        return check

    def offered(principal: Principal) -> list[mcp_prompts.PromptSpec]:
        can = usable(principal)
        return [p for p in mcp_prompts.PROMPTS if all(can(t) for t in p.tools)]

    async def list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        principal = current_principal.get()
        can = usable(principal)
        return types.ListPromptsResult(prompts=[types.Prompt(
            name=p.name, title=p.title, description=p.description,
            arguments=[types.PromptArgument(name=a.name, description=a.description, required=a.required)
                       for a in p.arguments],
            _meta={"io.flusia/tools": [*p.tools, *(t for t in p.optional if can(t))]})
            for p in offered(principal)])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        principal = current_principal.get()
        spec = mcp_prompts.prompt(params.name)
        if spec is None:
            names = ", ".join(p.name for p in mcp_prompts.PROMPTS)
            raise MCPError(code=INVALID_PARAMS, message=f"unknown prompt {params.name!r}; prompts are {names}")
        missing = sorted({f"{r}:{a}" for t in spec.tools if (op := registry.get(t)) is not None
                          for r, a in op.missing(principal.grants)})
        if missing or any(registry.get(t) is None for t in spec.tools):
            raise MCPError(code=INVALID_PARAMS, message=f"prompt {spec.name} uses tools this token may not call "
                                                        f"(missing {', '.join(missing) or 'tools'})")
        try:
            arguments = mcp_prompts.check_arguments(spec, params.arguments)
        except ValueError as e:
            raise MCPError(code=INVALID_PARAMS, message=str(e)) from None
        text = spec.render(arguments, usable(principal))
        return types.GetPromptResult(description=spec.description, messages=[
            types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))])

    server = Server(
        "flusia-crm",
        version=version,
        title="Flusia CRM",
        instructions=SERVER_INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        # The SDK checks Mcp-Param-* headers of 2026-07-28 calls against the tool's schema; without this lookup
        # it would run the whole tools/list handler on every call to find one schema.
        get_tool_input_schema=lambda name: tool_of(op).input_schema if (op := registry.get(name)) else None,
    )
    if not (os.environ.get("OTEL_TRACES_EXPORTER") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        # The SDK wraps every message in an OpenTelemetry span; with no exporter configured that is pure cost
        # on every call (our own log line per tool call stays). Configure an exporter to keep the spans.
        server.middleware = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server
