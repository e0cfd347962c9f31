"""The Litestar app: `/mcp` (MCP over streamable HTTP), `/healthz`, `/readyz`, and the OAuth discovery documents."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import anyio
from litestar import Litestar, Request, get
from litestar.config.cors import CORSConfig
from litestar.handlers import asgi
from litestar.response import Response
from litestar.types import Receive, Scope, Send
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from application.errors import ToolError
from application.principal import Principal
from interfaces.mcp_server import ToolFilter, build_server, current_filter, current_principal
from interfaces.oauth import oauth_audience, oauth_routes
from interfaces.public_url import PublicUrls, public_base_url  # noqa: F401 - public_base_url re-exported
from interfaces.runtime import Runtime
from projections.db_connections import connection_lost
from interfaces.attachments import download_route
from interfaces.health import health_routes
from interfaces.home import home_route
from interfaces.list_cache import ToolListCache
from interfaces.mcp_fast import FastToolCalls
from interfaces.metrics import auth_failure, metrics_route
from interfaces.slots import shared_slots
from interfaces.invite import invite_routes
from interfaces.trace_context import follow as follow_trace
from interfaces.tracking import tracking_routes
from interfaces.whatsapp_webhook import whatsapp_routes

log = logging.getLogger("flusia.http")
VERSION = "1.0.0"
MAX_BODY = 4 * 1024 * 1024


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "WWW-Authenticate, Mcp-Session-Id, Mcp-Protocol-Version, traceresponse",
}
CORS_PREFLIGHT = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept, Mcp-Protocol-Version, Mcp-Session-Id, Last-Event-ID, "
                                    "traceparent, tracestate",
    "Access-Control-Max-Age": "600",
}


def with_cors(send: Send) -> Send:
    """Browser clients (MCP Inspector) call /mcp from another origin with a bearer token, never cookies."""
    extra = [(k.lower().encode(), v.encode()) for k, v in CORS_HEADERS.items()]

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """A plain ASGI JSON response, for the mounted /mcp app (outside Litestar's response machinery)."""
    payload = json.dumps(body).encode() if body is not None else b""
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def challenge(base: str, error: str, description: str) -> str:
    """The WWW-Authenticate of a 401: where an OAuth client learns how to get a token (RFC 9728)."""
    return (f'Bearer realm="flusia", error="{error}", error_description="{description}", '
            f'resource_metadata="{base}/.well-known/oauth-protected-resource"')


async def send_unauthorized(send: Send, base: str, error: str, description: str) -> None:
    await send_json(send, 401, {"error": error, "error_description": description},
                    {"WWW-Authenticate": challenge(base, error, description)})


ERROR_STATUS = {"not_found": 404, "permission_denied": 403, "internal_error": 500, "busy": 503, "timeout": 504,
                "read_model_degraded": 503, "read_model_behind": 503}


def _tool_filter(scope: Scope) -> ToolFilter:
    """`?toolsets=` (toolset names and presets, see application.inventory.PRESETS) and `?readonly=1`. An unknown
    name is a ValueError naming the valid ones: a selection that silently lists nothing helps nobody."""
    from application.inventory import expand_toolsets

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    toolsets = None
    if "toolsets" in query:
        names = [t.strip() for v in query["toolsets"] for t in v.split(",") if t.strip()]
        toolsets = expand_toolsets(names) if names else None
    read_only = query.get("readonly", ["0"])[-1].lower() in {"1", "true", "yes"}
    return ToolFilter(toolsets=toolsets, read_only=read_only)


class BearerAuth:
    """Resolves `Authorization: Bearer` to a Principal: static API tokens here, OAuth access tokens via
    verifiers registered by the OAuth module. Both lead to the same permission checks."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.verifiers: list[Any] = []

    def _resolve(self, token: str) -> Principal | None:
        from application.identity import principal_for_token

        if token.startswith("flusia_"):
            with self.runtime.pool.connection() as conn:
                return principal_for_token(conn, token)
        for verify in self.verifiers:
            principal = verify(token)
            if principal is not None:
                return principal
        return None

    async def __call__(self, scope: Scope) -> Principal | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            return await anyio.to_thread.run_sync(self._resolve, token.strip(), limiter=self.runtime.runner.limiter)
        except Exception as e:
            if connection_lost(e):  # PostgreSQL restarting: the client may try again, it is not refused
                raise AuthUnavailable from None
            raise


class AuthUnavailable(Exception):
    """The token could not be checked because the database is out of reach for now (503, Retry-After)."""

    body = {"error": "unavailable", "error_description": "the database is out of reach for a moment; try again"}
    headers = {"Retry-After": "1"}


class GetStreams:
    """`GET /mcp` opens an SSE stream for server-initiated messages. Stateless, the server never has any to send on
    it, so an idle stream (nothing but keep-alive comments) is closed after FLUSIA_MCP_STREAM_IDLE_SECONDS
    (default 60), and a token may hold at most FLUSIA_MCP_STREAMS_PER_TOKEN (default 4) at once (429 beyond)."""

    def __init__(self) -> None:
        self.idle = max(1.0, float(os.environ.get("FLUSIA_MCP_STREAM_IDLE_SECONDS") or 60))
        self.per_token = max(1, int(os.environ.get("FLUSIA_MCP_STREAMS_PER_TOKEN") or 4))
        self.open: dict[str, int] = {}
        self.shared = shared_slots(self.per_token)  # with several API workers: the limit holds across them

    async def serve(self, scope: Scope, receive: Receive, send: Send, app: Any) -> None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        key = hashlib.sha256(headers.get("authorization", b"")).hexdigest()
        release = self.shared.take(key) if self.shared is not None else None
        if self.open.get(key, 0) >= self.per_token or (self.shared is not None and release is None):
            await send_json(send, 429, {"error": "too_many_streams", "error_description":
                                        f"at most {self.per_token} GET streams may be open per token"},
                            {"Retry-After": str(int(self.idle))})
            return
        self.open[key] = self.open.get(key, 0) + 1
        started = ended = False
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + self.idle) as idle:
                async def tracked(message: Any) -> None:
                    nonlocal started, ended
                    if message["type"] == "http.response.start":
                        started = True
                    elif message["type"] == "http.response.body":
                        ended = ended or not message.get("more_body", False)
                        if message.get("body", b"")[:1] not in (b"", b":"):  # an event, not a keep-alive comment
                            idle.deadline = anyio.current_time() + self.idle
                    await send(message)

                await app(scope, receive, tracked)
            if idle.cancelled_caught and started and not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]
            if release is not None:
                release()


async def cancelled_on_disconnect(app: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`, cancelling it when the client goes away: a tool call's database work is then cancelled too
    (Service._cancellable) instead of running on for a caller that will never read the answer."""
    body_read = anyio.Event()
    responded = False

    async def tracked_receive() -> Any:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_read.set()
        return message

    async def tracked_send(message: Any) -> None:
        nonlocal responded
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            responded = True
        await send(message)

    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            await body_read.wait()
            if (await receive())["type"] == "http.disconnect" and not responded:
                tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await app(scope, tracked_receive, tracked_send)
        tg.cancel_scope.cancel()


def create_app(runtime: Runtime, *, run_projector: bool = True) -> Litestar:
    server = build_server(runtime.registry, runtime.runner, VERSION)
    sessions = StreamableHTTPSessionManager(server, stateless=True, json_response=True, max_request_body_size=MAX_BODY)
    auth = BearerAuth(runtime)
    urls = PublicUrls.from_env()  # FLUSIA_PUBLIC_URL, trusted proxies, the listen address: never the Host header
    get_streams = GetStreams()
    tool_lists = ToolListCache(MAX_BODY)
    tool_calls = FastToolCalls(server, lambda: sessions._lifespan_state, sessions.handle_request, MAX_BODY)

    @asgi("/mcp", is_mount=True, copy_scope=True)
    async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        base = urls.base(scope)
        if scope["method"] == "OPTIONS":
            await send_json(send, 204, None, {"Allow": "GET, POST, DELETE, OPTIONS", **CORS_PREFLIGHT})
            return
        send = with_cors(send)
        oauth_audience.set(f"{base}/mcp")
        try:
            principal = await auth(scope)
        except AuthUnavailable as e:
            await send_json(send, 503, e.body, e.headers)
            return
        if principal is None:
            has_header = any(k.lower() == b"authorization" for k, _ in scope.get("headers", []))
            auth_failure("invalid_token" if has_header else "missing_token")
            await send_unauthorized(
                send, base, "invalid_token" if has_header else "invalid_request",
                "the access token is missing, expired or revoked" if has_header else "authorization required",
            )
            return
        principal, send = follow_trace(scope, principal, send)  # W3C traceparent: stored with the events' cause
        # DNS rebinding, another site's page (MCP: servers MUST check Origin). After the token check: a refused
        # request learns nothing either way, and OAuth discovery (the 401 challenge) never depends on the Host.
        refusal = urls.foreign_request(scope)
        if refusal is not None:
            await send_json(send, 403, {"error": "forbidden_origin", "error_description": refusal})
            return
        current_principal.set(principal)
        try:
            current_filter.set(_tool_filter(scope))
        except ValueError as e:
            await send_json(send, 400, {"error": "invalid_toolsets", "error_description": str(e)})
            return
        if scope["method"] == "GET":
            await get_streams.serve(scope, receive, send, sessions.handle_request)
            return
        tool_filter = current_filter.get()
        await tool_lists.serve(
            scope, receive, send, lambda: (tuple(sorted(principal.grants.items())), tool_filter),
            lambda s, r, w: cancelled_on_disconnect(tool_calls, s, r, w))

    def resource_metadata(request: Request[Any, Any, Any]) -> dict[str, Any]:
        base = urls.base(request.scope)
        return {
            "resource": f"{base}/mcp",
            "authorization_servers": [base],
            "scopes_supported": ["mcp:full"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Flusia CRM",
            "resource_documentation": f"{base}/",
        }

    @get("/.well-known/oauth-protected-resource", sync_to_thread=False)
    def protected_resource(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return resource_metadata(request)

    @get("/.well-known/oauth-protected-resource/mcp", sync_to_thread=False)
    def protected_resource_mcp(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return resource_metadata(request)

    @get("/crm/{kind:str}/{entity_id:str}")
    async def citation(request: Request[Any, Any, Any], kind: str, entity_id: str) -> Response[Any]:
        """A `search` result's url: with an authorised token, what `fetch` answers for it (JSON), within that
        token's permissions; without one, the same 401 challenge as /mcp (an OAuth client can sign in)."""
        try:
            principal = await auth(request.scope)
        except AuthUnavailable as e:
            return Response(e.body, status_code=503, headers=e.headers)
        if principal is None:
            auth_failure("invalid_token" if request.headers.get("authorization") else "missing_token")
            return Response({"error": "invalid_request", "error_description": "authorization required"}, status_code=401,
                            headers={"WWW-Authenticate": challenge(urls.base(request.scope), "invalid_request",
                                                                  "authorization required")})
        try:
            return Response(await runtime.runner.call(principal, "fetch", {"id": f"{kind}:{entity_id}"}))
        except ToolError as e:
            return Response({"error": e.as_dict()}, status_code=ERROR_STATUS.get(e.code, 400))

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start(run_projector=run_projector)
        try:
            async with sessions.run():
                yield
        finally:
            await runtime.stop()

    app = Litestar(
        [mcp_endpoint, protected_resource, protected_resource_mcp, citation, home_route(urls), *health_routes,
         *oauth_routes(runtime, auth, urls),
         download_route, *tracking_routes, *invite_routes(runtime), *whatsapp_routes, metrics_route(runtime, urls)],
        lifespan=[lifespan],
        debug=False,
        logging_config=None,  # our handler (interfaces/logs.py): value-free tracebacks, written at once
        # Browser-based clients (MCP Inspector) read the metadata and OAuth endpoints from another origin.
        cors_config=CORSConfig(allow_origins=["*"], allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                               allow_headers=["Authorization", "Content-Type", "Accept", "Mcp-Protocol-Version"],
                               expose_headers=["WWW-Authenticate"]),
    )
    app.state.runtime = runtime
    app.state.auth = auth
    return app
