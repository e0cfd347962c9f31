"""Calling sales tools in-process: validate, run, settle projections before presenting (read-your-writes)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from application.errors import ToolError
from application.service import _format_validation
from domain.errors import DomainError
from tests.conftest import settle


class Caller:
    def __init__(self, rt: Any, principal: Any) -> None:
        self.rt = rt
        self.principal = principal

    def __call__(self, name: str, args: dict[str, Any] | None = None) -> Any:
        op = self.rt.registry.get(name)
        try:
            params = msgspec.convert(args or {}, op.input)
        except msgspec.ValidationError as e:
            raise _format_validation(e) from None
        if not self.principal.can(op.resource, op.action):
            raise ToolError(f"missing permission {op.permission}", code="permission_denied")
        if op.kind == "query":
            return msgspec.to_builtins(self.rt.service.run_query(op, params, self.principal))
        returned, _ = self.rt.service.run_command(op, params, self.principal)
        settle(self.rt)
        out = returned if op.present is None else self.rt.service._present(op, returned, self.principal)
        return msgspec.to_builtins(out)

    def error(self, name: str, args: dict[str, Any] | None = None) -> DomainError | ToolError:
        with pytest.raises((DomainError, ToolError)) as info:
            self(name, args)
        return info.value
