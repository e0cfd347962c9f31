"""Calling tools in-process through the real service path (validation, storable values, permissions, unit of
work, read-your-writes settled synchronously, present): the integration tests' caller."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from application.errors import ToolError


def call(rt: Any, principal: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    """The tool's JSON result; raises ToolError exactly as the MCP layer would see it."""
    return anyio.run(rt.runner.call, principal, name, args or {})


class Caller:
    """`call(name, args)` for one principal; `call.error(name, args)` for a call that must fail."""

    def __init__(self, rt: Any, principal: Any) -> None:
        self.rt = rt
        self.principal = principal

    def __call__(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return call(self.rt, self.principal, name, args)

    def error(self, name: str, args: dict[str, Any] | None = None) -> ToolError:
        with pytest.raises(ToolError) as info:
            self(name, args)
        return info.value
