"""Errors a tool call can end with. Each carries a stable code, a message for the model and the field."""

from __future__ import annotations


class ToolError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


class InvalidArguments(ToolError):
    code = "invalid_arguments"


class PermissionDenied(ToolError):
    code = "permission_denied"


class UnknownTool(ToolError):
    code = "unknown_tool"
