"""Argument completion (`completion/complete`): what an MCP client suggests while a person fills in a prompt's
arguments or a resource template's `{id}`. Suggestions come from calling read tools for the caller, so the same
permissions, tenancy and tool selection apply: a tool the token may not call suggests nothing."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from application.errors import ToolError
from application.principal import Principal

MAX_VALUES = 20
MATCH_CHOICES = ("any", "vat", "email", "phone")
TEMPLATE = re.compile(r"^flusia://([a-z_]+)/\{id\}$")

Call = Callable[[Principal, str, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""Runs a read tool for the caller; None when the caller may not (permission, selection) or it failed."""


def _starting(values: list[str], typed: str) -> list[str]:
    """Distinct values, those starting with what was typed first, then those containing it (case-insensitive)."""
    low = typed.casefold()
    seen = list(dict.fromkeys(v for v in values if v))
    first = [v for v in seen if v.casefold().startswith(low)]
    return (first + [v for v in seen if low in v.casefold() and v not in first])[:MAX_VALUES]


def _months(today: date, count: int = 24) -> list[str]:
    year, month = today.year, today.month
    out = []
    for _ in range(count):
        month -= 1
        if month == 0:
            year, month = year - 1, 12
        out.append(f"{year:04d}-{month:02d}")
    return out


async def _names(call: Call, principal: Principal, tool: str, args: dict[str, Any], key: str) -> list[str]:
    page = await call(principal, tool, args)
    return [row.get(key) for row in (page or {}).get("items", []) if isinstance(row.get(key), str)]


async def prompt_values(call: Call, principal: Principal, argument: str, typed: str) -> list[str]:
    """By the argument's name, as the prompts of interfaces/mcp_prompts.py name them."""
    if argument in ("client", "deal"):
        kind, key = ("clients", "business_name") if argument == "client" else ("deals", "title")
        tool, args = (f"crm_{kind}_search", {"q": typed, "limit": MAX_VALUES}) if typed else \
            (f"crm_{kind}_list", {"limit": MAX_VALUES})
        return _starting(await _names(call, principal, tool, args, key), typed)
    if argument == "assign_to":
        return _starting(await _names(call, principal, "crm_users_list", {"limit": 100}, "name"), typed)
    if argument == "month":
        return [m for m in _months(date.today()) if m.startswith(typed)][:MAX_VALUES]
    if argument == "match":
        return [m for m in MATCH_CHOICES if m.startswith(typed.lower())]
    return []


async def resource_values(call: Call, principal: Principal, search: str | None, listing: str | None, typed: str
                          ) -> list[str]:
    """Ids of the toolset's entities: found by its search tool from what was typed (a name), or the newest ones,
    those whose id starts with what was typed first."""
    if typed and search:
        page = await call(principal, search, {"q": typed, "limit": MAX_VALUES})
        ids = [str(r["id"]) for r in (page or {}).get("items", []) if r.get("id")]
        if ids:
            return ids[:MAX_VALUES]
    if listing is None:
        return []
    page = await call(principal, listing, {"limit": 100})
    ids = [str(r["id"]) for r in (page or {}).get("items", []) if r.get("id")]
    return _starting(ids, typed) if typed else ids[:MAX_VALUES]


def guarded(run: Callable[[Principal, str, dict[str, Any]], Awaitable[dict[str, Any]]],
            allowed: Callable[[str], bool]) -> Call:
    """A Call from the tool runner: only tools this connection admits, errors as no suggestions."""
    async def call(principal: Principal, tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
        if not allowed(tool):
            return None
        try:
            return await run(principal, tool, args)
        except ToolError:
            return None
    return call
