"""Discovery mode (`/mcp?toolsets=discover`): four tools that reach every tool the token may use.

For clients that cap how many tools they load (some at 40): `crm_tools_search` finds tools by words or
toolset, and three callers run one by name. Each caller refuses tools of another kind, so the calling tool
carries the annotations of what it runs and a client's confirmation prompts still work: only
`crm_tools_call_destructive` is destructive. They need no permission of their own; the tool they run is checked,
logged and answered exactly as if it had been called directly.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from application.errors import InvalidArguments
from application.registry import Operation, registry
from application.shapes import Command, Query
from application.toolset import Toolset

tools = Toolset("tools", title="Tool discovery", meta=True, default=False,
                description="Find any tool by words and call it by name: for clients that load few tools")

KIND_WORDS = {"query": "read", "command": "write", "destructive": "destructive"}
WORD = re.compile(r"[a-z0-9]+")

ToolName = Annotated[str, Meta(min_length=1, max_length=100, description="From crm_tools_search.")]
Arguments = Annotated[dict[str, Any], Meta(description="The tool's arguments, as its input_schema says.")]


class ToolInfo(Struct, kw_only=True, omit_defaults=True):
    name: str
    toolset: str
    kind: Literal["read", "write", "destructive"]
    description: str
    input_schema: dict[str, Any]
    call_with: str
    """Which crm_tools_call_* runs it."""


class ToolMatches(Struct, kw_only=True, omit_defaults=True):
    items: list[ToolInfo]
    toolsets: list[str]
    """Every toolset the token has tools in, for narrowing the search."""


class Called(Struct, kw_only=True, omit_defaults=True):
    tool: str
    result: dict[str, Any]


def _usable(principal: Any) -> list[Operation]:
    return [op for op in registry.select(principal.grants) if op.toolset != tools.name]


def _score(op: Operation, wanted: set[str]) -> int:
    """Words in the toolset's name count most, then in the tool's name, its description, its arguments; a word
    also matches as the beginning of a longer one ('dup' finds 'duplicates')."""
    def hits(text: str) -> int:
        words = set(WORD.findall(text.lower()))
        return sum(1 for w in wanted if w in words or any(v.startswith(w) for v in words))

    return (4 * hits(op.toolset.replace("_", " ")) + 3 * hits(op.name.replace("_", " ")) + 2 * hits(op.description)
            + hits(json.dumps(op.input_schema())))


class SearchTools(Query, kw_only=True):
    """Find tools by words (e.g. 'overdue tasks', 'merge duplicates') and/or toolset, best match first, with
    their input schemas. Then run one with crm_tools_call_read, _write or _destructive as `call_with` says."""

    q: Annotated[str, Meta(max_length=200, description="Words to look for.")] | None = None
    toolset: Annotated[str, Meta(max_length=40)] | None = None
    kind: Literal["read", "write", "destructive"] | None = None
    limit: Annotated[int, Meta(ge=1, le=50)] = 10


async def search_tools(q: SearchTools, runner: Any, principal: Any) -> dict[str, Any]:
    usable = _usable(principal)
    wanted = set(WORD.findall((q.q or "").lower()))
    scored = []
    for op in usable:
        if q.toolset and op.toolset != q.toolset or q.kind and KIND_WORDS[op.kind] != q.kind:
            continue
        if wanted:
            score = _score(op, wanted)
            if score:
                scored.append((-score, op.name, op))
        else:
            scored.append((0, op.name, op))
    items = [ToolInfo(name=op.name, toolset=op.toolset, kind=KIND_WORDS[op.kind], description=op.description,
                      input_schema=op.input_schema(), call_with=f"crm_tools_call_{'read' if op.kind == 'query' else KIND_WORDS[op.kind]}")
             for _, _, op in sorted(scored)[: q.limit]]
    return _builtins(ToolMatches(items=items, toolsets=sorted({op.toolset for op in usable})))


tools.registry.query(tools.tool("search"), input=SearchTools, output=ToolMatches)(search_tools)


def _caller(kind: str, suffix: str, doc: str, base: type[Struct]) -> None:
    input_type = _input(f"Call{suffix.capitalize()}", base, doc)

    async def call(c: Any, runner: Any, principal: Any) -> dict[str, Any]:
        op = registry.get(c.name)
        if op is None or op.toolset == tools.name:
            raise InvalidArguments(f"{c.name!r} is not a tool; find one with crm_tools_search", field="name")
        if op.kind != kind:
            right = "read" if op.kind == "query" else KIND_WORDS[op.kind]
            raise InvalidArguments(f"{op.name} is a {KIND_WORDS[op.kind]} tool: call it with crm_tools_call_{right}",
                                   field="name")
        arguments = dict(c.arguments)
        if getattr(c, "idempotency_key", None) and "idempotency_key" not in arguments:
            arguments["idempotency_key"] = c.idempotency_key  # the caller's retry key protects the call it runs
        return _builtins(Called(tool=op.name, result=await runner.call(principal, op.name, arguments)))

    if kind == "query":
        tools.registry.query(tools.tool(f"call_{suffix}"), input=input_type, output=Called)(call)
    else:
        tools.registry.command(tools.tool(f"call_{suffix}"), input=input_type, output=Called, returns=Called,
                               destructive=kind == "destructive")(call)


def _input(name: str, base: type[Struct], doc: str) -> type[Struct]:
    return msgspec.defstruct(name, [("name", ToolName), ("arguments", Arguments, {})], bases=(base,), kw_only=True,
                             module=__name__, namespace={"__doc__": doc})


def _builtins(value: Any) -> dict[str, Any]:
    return msgspec.to_builtins(value)


_caller("query", "read", "Run a read tool found with crm_tools_search, by name with its arguments. Refuses write and "
        "delete tools.", Query)
_caller("command", "write", "Run a write tool found with crm_tools_search, by name with its arguments. Refuses read "
        "and delete tools.", Command)
_caller("destructive", "destructive", "Run a delete or irreversible tool found with crm_tools_search, by name with "
        "its arguments (confirm with the user first). Refuses read and write tools.", Command)
