"""Who is calling: the organization, user and credential behind a request, with effective grants."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from uuid import UUID, uuid4

from application import permissions

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A W3C `traceparent` of version 00: lowercase hex trace id, parent (span) id and flags."""


def _span_id() -> str:
    while True:
        span = secrets.token_hex(8)
        if span != "0" * 16:
            return span


@dataclass(frozen=True)
class TraceContext:
    """The W3C trace context (https://www.w3.org/TR/trace-context/) a request came with. Stored with the cause of the
    events it causes (event_causes.trace_id, span_id, parent_span_id), so a trace links a tool call to its events."""

    trace_id: str
    parent_id: str
    """The caller's span: the header's parent-id."""
    flags: str
    span_id: str = field(default_factory=_span_id)
    """This server's span for handling the request, answered in `traceresponse`."""

    def response_header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """A `traceparent` header value, or None when it is missing or invalid in any way (the spec's rules for version
    00: exactly 55 characters, lowercase hex, a trace id and a parent id not all zeros). An invalid header is
    ignored, never an error: the request goes on without a trace."""
    if not value:
        return None
    match = TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return TraceContext(trace_id, parent_id, flags)


@dataclass(frozen=True)
class Principal:
    organization_id: UUID
    user_id: UUID
    grants: dict[str, str]
    token_id: UUID | None = None
    oauth_client_id: str | None = None
    correlation_id: UUID = field(default_factory=uuid4)
    workflow_run_id: UUID | None = None
    """Set when a workflow run acts (application/workflow_engine.py): every event it causes names the run."""
    trace: TraceContext | None = None
    """The request's W3C trace context, when it sent a valid `traceparent` (interfaces/trace_context.py)."""

    def can(self, resource: str, action: str) -> bool:
        return permissions.allows(self.grants, resource, action)
