"""What a model loads stays within issue 10's budget as tools change: for the ten toolsets the budget was set for
(plus the always-listed connector tools), name + description + inputSchema <= 60,000 characters and the whole
`tools/list` result <= 150,000. bench/bench_tool_list.py measures the same through HTTP, with timings."""

from __future__ import annotations

import json

import mcp_types as types

from application.inventory import registry
from interfaces.mcp_server import ToolFilter, tool_of, toolsets_meta

ORIGINAL = frozenset("users,clients,tasks,deals,pipelines,services,activities,projects,wiki,stats".split(","))
ALWAYS = frozenset(t.name for t in registry.toolsets.values() if t.always)


def compact(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def listed() -> list[types.Tool]:
    chosen = ToolFilter(toolsets=ORIGINAL)
    return [tool_of(op) for op in registry if chosen.admits(op, always=ALWAYS)]


def test_the_model_visible_part_of_the_list_fits_the_budget():
    tools = listed()
    assert len(tools) >= 139
    visible = sum(compact({"name": t.name, "description": t.description, "inputSchema": t.input_schema}) for t in tools)
    assert visible <= 60_000, f"{visible} characters: trim descriptions or input schemas (see the issue 10 note)"


def test_the_whole_list_result_fits_the_budget():
    result = types.ListToolsResult(tools=listed(), _meta={"io.flusia/toolsets": toolsets_meta(registry)})
    body = {"jsonrpc": "2.0", "id": 1, "result": result.model_dump(by_alias=True, exclude_none=True, mode="json")}
    assert compact(body) <= 150_000, f"{compact(body)} characters"
