"""Calling tools in-process for the work-management integration tests, projections settled after each write."""

from __future__ import annotations

from typing import Any

import msgspec

from tests.conftest import settle


def call(rt: Any, principal: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    """Validate, run and (for writes) settle the projections before presenting, like the server's read-your-writes."""
    op = rt.registry.get(name)
    params = msgspec.convert(args or {}, op.input)
    if op.kind == "query":
        return msgspec.to_builtins(rt.service.run_query(op, params, principal))
    returned, _ = rt.service.run_command(op, params, principal)
    settle(rt)
    out = returned if op.present is None else rt.service._present(op, returned, principal)
    return msgspec.to_builtins(out)
