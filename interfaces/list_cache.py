"""`tools/list` answered from memory: the same caller's same page is the same bytes until the server restarts.

A full list is large (every tool's schemas), and building and serializing it through the SDK on every page of
every connection was most of its cost. The tool inventory never changes while the server runs, so the SDK's own
answer is kept per (permissions, tool selection, page, protocol version) and replayed with the request's
JSON-RPC id. Only a plain single `tools/list` request is answered here; everything else goes to the SDK.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.types import Receive, Scope, Send

from interfaces.mcp_fast import header, replaying

MAX_ENTRIES = 512


class ToolListCache:
    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._answers: OrderedDict[tuple, tuple[int, list[tuple[bytes, bytes]], bytes]] = OrderedDict()

    async def serve(self, scope: Scope, receive: Receive, send: Send, key_of: Callable[[], tuple],
                    app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        body, more = b"", True
        first: list[dict[str, Any]] = []
        while more and len(body) <= self.max_body:
            message = await receive()
            first.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = _single_list_request(body) if not more and len(body) <= self.max_body else None
        replay = replaying(first, receive)
        if request is None:
            await app(scope, replay, send)
            return
        key = (*key_of(), request.get("params", {}).get("cursor"), header(scope, b"mcp-protocol-version"))
        cached = self._answers.get(key)
        if cached is not None:
            self._answers.move_to_end(key)
            status, headers, result = cached
            payload = b'{"jsonrpc":"2.0","id":' + json.dumps(request["id"]).encode() + b',"result":' + result + b"}"
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        captured: dict[str, Any] = {"body": b""}

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                captured["status"], captured["headers"] = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        await app(scope, replay, capture)
        if captured.get("status") == 200:
            try:
                answer = json.loads(captured["body"])
            except ValueError:
                return
            if isinstance(answer, dict) and "result" in answer:
                result = json.dumps(answer["result"], separators=(",", ":"), ensure_ascii=False).encode()
                self._answers[key] = (200, captured["headers"], result)
                if len(self._answers) > MAX_ENTRIES:
                    self._answers.popitem(last=False)


def _single_list_request(body: bytes) -> dict[str, Any] | None:
    if b'"tools/list"' not in body:
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if (isinstance(request, dict) and request.get("method") == "tools/list" and request.get("jsonrpc") == "2.0"
            and isinstance(request.get("id"), (int, str)) and isinstance(request.get("params", {}), dict)
            and isinstance(request.get("params", {}).get("cursor"), (str, type(None)))):
        return request
    return None
