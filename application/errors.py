"""Errors a tool call can end with. Each carries a stable code, a message for the model and the field."""

from __future__ import annotations

from typing import Any


class ToolError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        if code:
            self.code = code

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.details:
            out.update(self.details)
        return out


class InvalidArguments(ToolError):
    code = "invalid_arguments"


class PermissionDenied(ToolError):
    code = "permission_denied"


class UnknownTool(ToolError):
    code = "unknown_tool"


class ReadModelDegraded(ToolError):
    """A read model cannot answer truthfully for this organization: one of its events is parked."""

    code = "read_model_degraded"


class StoredButNotReadable(ToolError):
    """The command's events were committed, but its result cannot be read back yet. Never 'nothing changed'."""

    code = "read_model_behind"
