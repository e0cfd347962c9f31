"""A local WhatsApp Cloud API (Graph API) for tests and benchmarks, and webhook deliveries as Meta builds them.

Endpoints, with the real API's JSON shapes (Graph API v23.0, under `/v23.0`):
- `POST /{phone_number_id}/messages`: a text or template message -> `{"messaging_product": "whatsapp", "contacts":
  [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]}`; a read receipt (`"status": "read"`) -> `{"success": true}`;
- `GET /{business_account_id}/message_templates` -> `{"data": [{name, language, status, category, components, id}],
  "paging": {"cursors": {"before", "after"}, "next"}}`, 2 per page so paging is exercised;
- `GET /{media_id}` -> `{"url", "mime_type", "sha256", "file_size", "id", "messaging_product"}`, and the URL itself
  (which also needs the bearer token) -> the bytes.
Errors are `{"error": {"message", "type", "code", "error_data": {"messaging_product", "details"}, "fbtrace_id"}}`:
a wrong token is 401 (code 190); tests script others with `fail_next` (131047 re-engagement, 130429 rate limit as
HTTP 429 with Retry-After, ...).

`delivery(...)`, `text_message(...)`, `status(...)` build webhook bodies; `signed(body, secret)` the
`X-Hub-Signature-256` header.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = "v23.0"


class WhatsappStub:
    def __init__(self, *, phone_number_id: str = "106540352242922", business_account_id: str = "102290129340398",
                 token: str = "wa-test-token") -> None:
        self.phone_number_id = phone_number_id
        self.business_account_id = business_account_id
        self.token = token
        self.sent: list[dict[str, Any]] = []
        self.reads: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.templates: list[dict[str, Any]] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self._failures: list[tuple[int, int, str, str | None]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self.delay = 0.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", (headers or {}).pop("Content-Type", "application/json"))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(*stub.answer("GET", self.path, self.headers.get("Authorization", ""), None))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._answer(*stub.answer("POST", self.path, self.headers.get("Authorization", ""), body))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """What FLUSIA_WHATSAPP_URL is set to."""
        return f"{self.base}/{VERSION}"

    def __enter__(self) -> WhatsappStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- scripting -------------------------------------------------------------------------------------------
    def fail_next(self, code: int, *, status: int = 400, title: str = "error", retry_after: str | None = None,
                  times: int = 1) -> None:
        with self._lock:
            self._failures += [(status, code, title, retry_after)] * times

    def add_template(self, name: str, language: str, body: str, *, status: str = "APPROVED",
                     category: str = "UTILITY") -> None:
        self.templates.append({"name": name, "language": language, "status": status, "category": category,
                               "parameter_format": "POSITIONAL", "id": str(len(self.templates) + 9000),
                               "components": [{"type": "HEADER", "format": "TEXT", "text": "Flusia"},
                                              {"type": "BODY", "text": body},
                                              {"type": "FOOTER", "text": "Rispondi STOP per non ricevere"}]})

    def add_media(self, media_id: str, content: bytes, mime_type: str) -> None:
        self.media[media_id] = (content, mime_type)

    # -- answering -------------------------------------------------------------------------------------------
    @staticmethod
    def error(code: int, title: str, details: str = "") -> dict[str, Any]:
        return {"error": {"message": f"(#{code}) {title}", "type": "OAuthException", "code": code,
                          "error_data": {"messaging_product": "whatsapp", "details": details or title},
                          "fbtrace_id": "AbCdEf123"}}

    def answer(self, method: str, target: str, authorization: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append((method, path))
        if authorization != f"Bearer {self.token}":
            return 401, self.error(190, "Error validating access token"), {}
        if path.startswith("/files/"):
            content, mime = self.media.get(path.removeprefix("/files/"), (b"", ""))
            return (200, content, {"Content-Type": mime}) if mime else (404, b"", {})
        if not path.startswith(f"/{VERSION}/"):
            return 404, self.error(100, "Unknown path"), {}
        rest = path.removeprefix(f"/{VERSION}/")
        if method == "POST" and re.match(r"^[0-9]+/messages$", rest):  # any business number of this account
            return self._message(body)
        if method == "GET" and rest == f"{self.business_account_id}/message_templates":
            return self._templates(query)
        if method == "GET" and rest in self.media:
            content, mime = self.media[rest]
            return 200, {"messaging_product": "whatsapp", "url": f"{self.base}/files/{rest}", "mime_type": mime,
                         "sha256": hashlib.sha256(content).hexdigest(), "file_size": str(len(content)), "id": rest}, {}
        return 400, self.error(100, "Invalid parameter", "Unsupported request"), {}

    def _message(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if self._failures:
                status, code, title, after = self._failures.pop(0)
                return status, self.error(code, title), ({"Retry-After": after} if after else {})
            if body.get("status") == "read":
                self.reads.append(body.get("message_id"))
                return 200, {"success": True}, {}
            if body.get("messaging_product") != "whatsapp" or body.get("type") not in ("text", "template"):
                return 400, self.error(100, "Invalid parameter"), {}
            if body["type"] == "template":
                template = body.get("template") or {}
                known = [t for t in self.templates if t["name"] == template.get("name")
                         and t["language"] == (template.get("language") or {}).get("code")]
                if not known:
                    return 404, self.error(132001, "Template name does not exist in the translation"), {}
                expected = known[0]["components"][1]["text"].count("{{")
                given = sum(len(c.get("parameters", [])) for c in template.get("components", []))
                if expected != given:
                    return 400, self.error(132000, "Number of parameters does not match the expected number of params"), {}
            self._counter += 1
            wamid = f"wamid.STUB{self._counter:08d}"
            self.sent.append({**body, "_wamid": wamid})
        return 200, {"messaging_product": "whatsapp", "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                     "messages": [{"id": wamid}]}, {}

    def _templates(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        items = [t for t in self.templates if "name" not in query or t["name"] == query["name"]]
        start = int(query.get("after") or 0)
        page = items[start:start + 2]
        paging: dict[str, Any] = {"cursors": {"before": str(start), "after": str(start + len(page))}}
        if start + 2 < len(items):
            paging["next"] = f"{self.url}/{self.business_account_id}/message_templates?after={start + 2}"
        return 200, {"data": page, "paging": paging}, {}


# -- webhook deliveries ------------------------------------------------------------------------------------------
def delivery(phone_number_id: str, *, messages: list[dict[str, Any]] | None = None,
             statuses: list[dict[str, Any]] | None = None, contacts: list[dict[str, Any]] | None = None,
             account: str = "102290129340398", display: str = "15550783881") -> bytes:
    value: dict[str, Any] = {"messaging_product": "whatsapp",
                             "metadata": {"display_phone_number": display, "phone_number_id": phone_number_id}}
    if contacts:
        value["contacts"] = contacts
    if messages:
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": account, "changes": [{"value": value, "field": "messages"}]}]}).encode()


def contact(wa_id: str, name: str) -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


def text_message(wa_id: str, wamid: str, body: str, *, at: float | None = None) -> dict[str, Any]:
    return {"from": wa_id, "id": wamid, "timestamp": str(int(at if at is not None else time.time())), "type": "text",
            "text": {"body": body}}


def status(wamid: str, value: str, recipient: str, *, callback: str | None = None, at: float | None = None,
           error: tuple[int, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": wamid, "status": value, "timestamp": str(int(at if at is not None else time.time())),
                           "recipient_id": recipient}
    if callback:
        out["biz_opaque_callback_data"] = callback
    if value == "sent":
        out["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}
    if error:
        out["errors"] = [{"code": error[0], "title": error[1], "message": error[1],
                          "error_data": {"details": error[1]}, "href": "/docs/whatsapp/cloud-api/support/error-codes"}]
    return out


def signed(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
