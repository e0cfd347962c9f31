"""W3C Trace Context on `/mcp`: a request's `traceparent` (https://www.w3.org/TR/trace-context/) is taken when valid
(application/principal.py `parse_traceparent`; an invalid or repeated header is ignored, never an error), carried
by the principal into the cause of every event the call records (event_causes.trace_id, span_id, parent_span_id),
and answered with `traceresponse: 00-<trace id>-<this server's span id>-<flags>` (Trace Context Level 2), so the
caller sees its trace was taken and which span handled it. `tracestate` is not used."""

from __future__ import annotations

import dataclasses
from typing import Any

from litestar.types import Scope, Send

from application.principal import Principal, parse_traceparent


def follow(scope: Scope, principal: Principal, send: Send) -> tuple[Principal, Send]:
    """The principal with the request's trace context, and a `send` that answers `traceresponse`; unchanged when the
    request has no valid `traceparent`."""
    values = [v for k, v in scope.get("headers", []) if k.lower() == b"traceparent"]
    if len(values) != 1:  # none, or several (the spec: a receiver with several cannot tell which is meant)
        return principal, send
    trace = parse_traceparent(values[0].decode("latin-1").strip(" \t"))
    if trace is None:
        return principal, send
    header = (b"traceresponse", trace.response_header().encode("ascii"))

    async def answered(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), header]}
        await send(message)

    return dataclasses.replace(principal, trace=trace), answered
