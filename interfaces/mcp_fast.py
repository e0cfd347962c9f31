"""A plain `tools/call` POST answered by the SDK's own request kernel, without its per-request session machinery.

In stateless JSON-response mode the SDK builds, for every POST, a transport, memory streams, a JSON-RPC dispatcher
and a task group, runs a one-request server loop and tears it all down. Under load that was more CPU than the tool
call itself (bench/bench_load.py, py-spy). Tool calls are what assistants send most, so one plain `tools/call` (a
single JSON-RPC request, headers the SDK accepts, a handshake-era protocol version) goes straight to
`ServerRunner.on_request`: the SDK's own validation of the method and params, middleware, our handler and the
result's shaping. Its answer, or the error the dispatcher would make of an exception, is written as the SDK's
transport writes a JSON response. Anything else (other methods, batches, notifications, a body or header the SDK
would refuse, another protocol era) goes to the SDK, which answers or refuses it as always.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import pydantic_core
from litestar.types import Receive, Scope, Send
from mcp.server.connection import Connection
from mcp.server.runner import ServerRunner
from mcp.server.streamable_http import jsonrpc_message_adapter
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.transport_context import TransportContext
from mcp_types import DEFAULT_NEGOTIATED_VERSION, ErrorData, JSONRPCError, JSONRPCRequest, JSONRPCResponse
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

log = logging.getLogger("flusia.mcp")

App = Callable[[Scope, Receive, Send], Awaitable[None]]
JSON = "application/json"
NO_BACK_CHANNEL = TransportContext(kind="streamable-http", can_send_request=False)


@dataclass
class OneShotContext:
    """The dispatch context of one JSON-response POST: like the SDK's for this mode, a request to the client raises
    NoBackChannelError and notifications are dropped (a JSON response has no room for them)."""

    _request_id: Any
    transport: TransportContext = NO_BACK_CHANNEL
    message_metadata: Any = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)

    @property
    def request_id(self) -> Any:
        return self._request_id

    @property
    def can_send_request(self) -> bool:
        return False

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        return None

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None

    def close(self) -> None:
        return None


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _accepts_json(scope: Scope) -> bool:
    """The SDK's Accept rule for JSON-response mode (RFC 7231 wildcards included)."""
    kinds = [part.strip().split(";")[0].strip().lower() for part in (header(scope, b"accept") or "").split(",")]
    return any(kind in (JSON, "application/*", "*/*") for kind in kinds)


def _is_json(scope: Scope) -> bool:
    content_type = header(scope, b"content-type") or ""
    return any(part.strip() == JSON for part in content_type.split(";")[0].split(","))


def plain_tool_call(scope: Scope, body: bytes) -> tuple[JSONRPCRequest, str] | None:
    """The request and its protocol version when this POST is one the SDK would hand to its kernel as is."""
    version = header(scope, b"mcp-protocol-version")
    if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None  # another era: the SDK's own entry classifies it
    if not (_accepts_json(scope) and _is_json(scope)) or b'"tools/call"' not in body:
        return None
    try:
        message = jsonrpc_message_adapter.validate_python(pydantic_core.from_json(body), by_name=False)
    except ValueError:  # pydantic's ValidationError too: the SDK answers those with its own error
        return None
    if not isinstance(message, JSONRPCRequest) or message.method != "tools/call":
        return None
    return message, version or DEFAULT_NEGOTIATED_VERSION


class FastToolCalls:
    """An ASGI app for POSTs to /mcp: plain tool calls here, everything else to `fallback` (the SDK's session
    manager), with the body given back to it unchanged."""

    def __init__(self, server: Any, lifespan_state: Callable[[], Any], fallback: App, max_body: int) -> None:
        self.server = server
        self.lifespan_state = lifespan_state
        self.fallback = fallback
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read: list[dict[str, Any]] = []
        body, more = b"", True
        while more and len(body) <= self.max_body:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        plain = None if more or len(body) > self.max_body else plain_tool_call(scope, body)
        if plain is None:
            await self.fallback(scope, replaying(read, receive), send)
            return
        request, version = plain
        runner = ServerRunner(self.server, Connection.from_envelope(version, None, None), self.lifespan_state())
        try:
            result = await runner.on_request(OneShotContext(request.id), request.method, request.params)
            answer: JSONRPCResponse | JSONRPCError = JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result)
        except Exception as e:  # the dispatcher's exception-to-wire rule, kept as it is
            error = handler_exception_to_error_data(e)
            if error is None:
                log.exception("handler for tools/call raised")
                error = ErrorData(code=0, message=str(e))
            answer = JSONRPCError(jsonrpc="2.0", id=request.id, error=error)
        payload = answer.model_dump_json(by_alias=True, exclude_unset=True).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(payload)).encode()), (b"content-type", JSON.encode())]})
        await send({"type": "http.response.body", "body": payload})


def replaying(first: list[dict[str, Any]], receive: Receive) -> Receive:
    """A `receive` that first gives back the messages already read, then reads on."""
    pending = list(first)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
