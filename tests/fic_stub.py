"""A local FattureInCloud API for tests and benchmarks: the endpoints the official SDK calls for issued documents,
answering with the real API's JSON shapes (API v2: `GET /c/{company_id}/issued_documents` paginated with
`current_page`/`last_page`/`total`/`data`, `GET /c/{company_id}/issued_documents/{document_id}` as `{"data": ...}`,
errors as `{"error": {"message": ...}}`, 401 for a wrong bearer token, 404 for an unknown company or document,
429 with `Retry-After`).

Tests script failures (`fail_next`), hold a page until released (`hold_page`), and change documents between syncs.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LIST = re.compile(r"^/c/(\d+)/issued_documents$")
ONE = re.compile(r"^/c/(\d+)/issued_documents/(\d+)$")
DATE_RANGE = re.compile(r"date\s*>=\s*'(\d{4}-\d{2}-\d{2})'\s+and\s+date\s*<=\s*'(\d{4}-\d{2}-\d{2})'")


def document(doc_id: int, *, day: date, client: str = "Rossi Srl", vat: str | None = "IT01234567890",
             net: str = "1000.00", vat_percent: int = 22, paid: bool = False, number: int | None = None,
             numeration: str = "", instalments: int = 1, subject: str | None = None) -> dict[str, Any]:
    """An issued invoice as GET /c/{id}/issued_documents?fieldset=detailed returns it."""
    net_amount = round(float(net), 2)
    vat_amount = round(net_amount * vat_percent / 100, 2)
    gross = round(net_amount + vat_amount, 2)
    share = round(gross / instalments, 2)
    payments = []
    for i in range(instalments):
        amount = share if i < instalments - 1 else round(gross - share * (instalments - 1), 2)
        due = day + timedelta(days=30 * (i + 1))
        payments.append({"id": doc_id * 10 + i, "amount": amount, "due_date": due.isoformat(),
                         "paid_date": due.isoformat() if paid else None, "status": "paid" if paid else "not_paid",
                         "payment_terms": {"days": 30 * (i + 1), "type": "standard"},
                         "payment_account": {"id": 1, "name": "Banca Intesa"}})
    return {
        "id": doc_id, "type": "invoice", "number": number if number is not None else doc_id, "numeration": numeration,
        "date": day.isoformat(), "year": day.year,
        "entity": {"id": 9000 + (abs(hash(client)) % 1000), "name": client, "vat_number": vat, "tax_code": None,
                   "address_street": "Via Roma 1", "address_postal_code": "20100", "address_city": "Milano",
                   "address_province": "MI", "country": "Italia"},
        "currency": {"id": "EUR", "exchange_rate": "1.00000", "symbol": "€"},
        "language": {"code": "it", "name": "Italiano"},
        "subject": subject or "", "visible_subject": subject or "",
        "amount_net": net_amount, "amount_vat": vat_amount, "amount_gross": gross,
        "items_list": [{"id": doc_id * 10, "product_id": None, "code": "CONS", "name": "Consulenza",
                        "description": "Servizio di consulenza", "qty": 1, "net_price": net_amount,
                        "category": "", "discount": 0,
                        "vat": {"id": 0, "value": vat_percent, "description": f"IVA {vat_percent}%"},
                        "not_taxable": False, "apply_withholding_taxes": False, "stock": False}],
        "payments_list": payments,
        "url": f"https://compute.fattureincloud.it/doc/{doc_id}.pdf", "e_invoice": True, "ei_status": "sent",
        "created_at": f"{day.isoformat()} 09:00:00", "updated_at": f"{day.isoformat()} 09:00:00",
    }


@dataclass
class Scripted:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class FattureInCloudStub:
    def __init__(self, *, company_id: int = 12345, token: str = "fic-test-token") -> None:
        self.company_id = company_id
        self.token = token
        self.documents: dict[int, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.scripted: list[Scripted] = []
        self.held_pages: dict[int, threading.Event] = {}
        self.reached: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self._page_cache: dict[tuple[Any, ...], bytes] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, headers, body = stub.answer(self.path, self.headers.get("Authorization", ""))
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FattureInCloudStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for event in self.held_pages.values():
            event.set()
        self.server.shutdown()
        self.server.server_close()

    # -- scripting ------------------------------------------------------------------------------------------
    def add(self, *docs: dict[str, Any]) -> None:
        with self.lock:
            for d in docs:
                self.documents[d["id"]] = d
            self._page_cache.clear()

    def remove(self, doc_id: int) -> None:
        with self.lock:
            self.documents.pop(doc_id, None)
            self._page_cache.clear()

    def fail_next(self, status: int, *, times: int = 1, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        messages = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 429: "Too Many Attempts.",
                    500: "Server Error", 503: "Service Unavailable"}
        for _ in range(times):
            self.scripted.append(Scripted(status, headers, {"error": {"message": messages.get(status, "Error")}}))

    def hold_page(self, page: int) -> threading.Event:
        """Requests for this page wait until the returned event is set; `reached[page]` is set when one arrives."""
        self.held_pages[page] = threading.Event()
        self.reached[page] = threading.Event()
        return self.held_pages[page]

    # -- answering --------------------------------------------------------------------------------------------
    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.requests.append({"path": parts.path, "query": query})
            scripted = self.scripted.pop(0) if self.scripted else None
        if scripted is not None:
            return scripted.status, scripted.headers, scripted.body
        if authorization != f"Bearer {self.token}":
            return 401, {}, {"error": {"message": "Unauthorized"}}
        if m := LIST.match(parts.path):
            if int(m.group(1)) != self.company_id:
                return 404, {}, {"error": {"message": "Company not found"}}
            return 200, {}, self._list(parts.path, query)
        if m := ONE.match(parts.path):
            doc = self.documents.get(int(m.group(2)))
            if int(m.group(1)) != self.company_id or doc is None:
                return 404, {}, {"error": {"message": "Document not found"}}
            return 200, {}, {"data": doc}
        return 404, {}, {"error": {"message": "Not found"}}

    def _list(self, path: str, query: dict[str, str]) -> bytes:
        page = int(query.get("page", 1))
        per_page = int(query.get("per_page", 50))
        if page in self.held_pages:
            self.reached[page].set()
            self.held_pages[page].wait(60)
        key = (page, per_page, query.get("q"), query.get("type"))
        with self.lock:
            cached = self._page_cache.get(key)
            if cached is not None:
                return cached
            docs = sorted(self.documents.values(), key=lambda d: d["id"])
            if query.get("type"):
                docs = [d for d in docs if d["type"] == query["type"]]
            if m := DATE_RANGE.search(query.get("q", "")):
                docs = [d for d in docs if m.group(1) <= d["date"] <= m.group(2)]
            total = len(docs)
            last_page = max(1, -(-total // per_page))
            chunk = docs[(page - 1) * per_page: page * per_page]

            def page_url(n: int) -> str:
                return f"{self.url}{path}?page={n}"

            body = json.dumps({
                "current_page": page, "data": chunk, "first_page_url": page_url(1),
                "from": (page - 1) * per_page + 1 if chunk else None, "last_page": last_page,
                "last_page_url": page_url(last_page), "next_page_url": page_url(page + 1) if page < last_page else None,
                "path": f"{self.url}{path}", "per_page": per_page, "prev_page_url": page_url(page - 1) if page > 1 else None,
                "to": (page - 1) * per_page + len(chunk) if chunk else None, "total": total,
            }).encode()
            self._page_cache[key] = body
            return body
