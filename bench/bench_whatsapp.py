#!/usr/bin/env python
"""WhatsApp webhook ingestion benchmark (issue 15).

The real server (`flusia serve`: webhook, worker, projector in one process) on a fresh database, one organization
connected to WhatsApp. BENCH_MESSAGES (default 10,000) text messages from BENCH_CUSTOMERS (default 200) numbers
are POSTed to `/webhooks/whatsapp/<organization>`, each delivery signed (X-Hub-Signature-256) as Meta signs it, one
message per delivery as Meta sends them, BENCH_CONCURRENCY (default 8) requests at a time. Printed:

1. Baseline, same run, same client and concurrency: `GET /healthz` requests per second (the server's HTTP floor).
2. Ingestion: messages per second from the first POST to the last message visible in the read model that
   crm_whatsapp_list_messages answers from, and its ratio to the baseline; the POSTs' own answer time (p50/p95).
3. Latency from POST to visible in crm_whatsapp_list_messages: every BENCH_SAMPLE-th message (default 25th) is
   followed by a poller calling the tool (MCP tools/call over HTTP) until the message is listed: p50/p95/max.

Usage (repository root, venv active): python bench/bench_whatsapp.py
Environment: BENCH_ADMIN_URL, BENCH_MESSAGES, BENCH_CUSTOMERS, BENCH_CONCURRENCY, BENCH_SAMPLE, BENCH_KEEP_DB=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from application import identity  # noqa: E402
from application.migrate import migrate  # noqa: E402
from interfaces.database import create_database, drop_database  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.whatsapp_stub import WhatsappStub, contact, delivery, signed, text_message  # noqa: E402

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "10000"))
CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "200"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
SAMPLE = int(os.environ.get("BENCH_SAMPLE", "25"))
SECRET = "bench-app-secret-000"
RESULTS = ROOT / "bench" / "results"


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(sorted(samples), n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


class Rpc:
    """MCP tools/call as JSON-RPC over HTTP."""

    def __init__(self, http: httpx.AsyncClient, mcp_url: str, token: str) -> None:
        self.http, self.url, self.ids = http, mcp_url, iter(range(1, 10**9))
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                        "MCP-Protocol-Version": "2025-11-25"}

    async def __call__(self, name: str, args: dict) -> dict:
        body = {"jsonrpc": "2.0", "id": next(self.ids), "method": "tools/call", "params": {"name": name, "arguments": args}}
        r = await self.http.post(self.url, json=body, headers=self.headers)
        r.raise_for_status()
        result = r.json()["result"]
        if result.get("isError"):
            raise RuntimeError(f"{name} failed: {result['content'][0]['text'][:300]}")
        return result["structuredContent"]


async def run(base: str, org_id: uuid.UUID, token: str, number: str, conn: psycopg.Connection) -> dict:
    hook = f"{base}/webhooks/whatsapp/{org_id}"
    limits = httpx.Limits(max_connections=CONCURRENCY + 8, max_keepalive_connections=CONCURRENCY + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        rpc = Rpc(http, f"{base}/mcp", token)
        # 1. baseline: the server's trivial endpoint, same client and concurrency
        n_base = max(2000, MESSAGES // 2)
        queue = iter(range(n_base))

        async def health_worker() -> None:
            for _ in queue:
                (await http.get(f"{base}/healthz")).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(health_worker() for _ in range(CONCURRENCY)))
        baseline_rps = n_base / (time.perf_counter() - started)

        # warm-up: one message per customer opens the chats (not timed)
        bodies = [delivery(number, contacts=[contact(f"39333{c:07d}", f"Cliente {c}")],
                           messages=[text_message(f"39333{c:07d}", f"wamid.WARM{c}", "ciao")]) for c in range(CUSTOMERS)]
        for body in bodies:
            (await http.post(hook, content=body, headers={"X-Hub-Signature-256": signed(body, SECRET)})).raise_for_status()
        while conn.execute("SELECT count(*) AS n FROM whatsapp_messages WHERE organization_id = %s",
                           (org_id,)).fetchone()["n"] < CUSTOMERS:
            await asyncio.sleep(0.05)
        chats = {r["wa_id"]: str(r["id"]) for r in conn.execute(
            "SELECT wa_id, id FROM whatsapp_chats WHERE organization_id = %s", (org_id,)).fetchall()}

        # 2 + 3. the measured run
        acks: list[float] = []
        latencies: list[float] = []
        pollers: list[asyncio.Task] = []
        work = iter(range(MESSAGES))

        async def visible(wa_id: str, wamid: str, posted: float) -> None:
            while True:
                page = await rpc("crm_whatsapp_list_messages", {"chat_id": chats[wa_id], "limit": 10})
                if any(m.get("whatsapp_message_id") == wamid for m in page["items"]):
                    latencies.append(time.perf_counter() - posted)
                    return
                await asyncio.sleep(0.005)

        async def poster() -> None:
            for i in work:
                wa_id = f"39333{i % CUSTOMERS:07d}"
                wamid = f"wamid.BENCH{i:07d}"
                body = delivery(number, messages=[text_message(wa_id, wamid, f"Messaggio numero {i}: preventivo per "
                                                                             "la fattura di marzo")])
                t = time.perf_counter()
                r = await http.post(hook, content=body, headers={"X-Hub-Signature-256": signed(body, SECRET)})
                acks.append(time.perf_counter() - t)
                r.raise_for_status()
                if i % SAMPLE == 0:
                    pollers.append(asyncio.create_task(visible(wa_id, wamid, t)))

        first = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
        posted = time.perf_counter()
        total = CUSTOMERS + MESSAGES
        while conn.execute("SELECT count(*) AS n FROM whatsapp_messages WHERE organization_id = %s",
                           (org_id,)).fetchone()["n"] < total:
            await asyncio.sleep(0.01)
        last_visible = time.perf_counter()
        await asyncio.gather(*pollers)
    return {"baseline_rps": baseline_rps, "messages": MESSAGES, "post_seconds": posted - first,
            "ingest_seconds": last_visible - first, "messages_per_second": MESSAGES / (last_visible - first),
            "ack_p50_ms": pct(acks, 50) * 1000, "ack_p95_ms": pct(acks, 95) * 1000,
            "visible_p50_ms": pct(latencies, 50) * 1000, "visible_p95_ms": pct(latencies, 95) * 1000,
            "visible_max_ms": max(latencies) * 1000, "samples": len(latencies)}


def main() -> None:
    name = f"flusia_bench_whatsapp_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn, WhatsappStub() as stub:
            org = identity.create_organization(conn, "Bench WhatsApp", "bench@example.com", "Bench Admin")
            port = free_port()
            log = open(RESULTS / "whatsapp-server.log", "w")
            server = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)], cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "DATABASE_URL": url, "FLUSIA_WHATSAPP_URL": stub.url})
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

            async def connect() -> None:
                async with httpx.AsyncClient(timeout=60) as http:
                    await Rpc(http, f"{base}/mcp", org.token)("crm_settings_update_organization", {"whatsapp": {
                        "phone_number_id": stub.phone_number_id, "access_token": stub.token, "app_secret": SECRET,
                        "webhook_verify_token": "bench-verify"}})

            asyncio.run(connect())
            print(f"{MESSAGES} messages from {CUSTOMERS} numbers, {CONCURRENCY} concurrent POSTs, a delivery each",
                  file=sys.stderr)
            out = asyncio.run(run(base, org.organization_id, org.token, stub.phone_number_id, conn))
        ratio = out["messages_per_second"] / out["baseline_rps"]
        print(f"baseline  GET /healthz                       {out['baseline_rps']:8.0f} requests/s")
        print(f"ingestion signed POST -> list_messages       {out['messages_per_second']:8.0f} messages/s"
              f"  ({ratio:.2f}x the baseline; {out['ingest_seconds']:.1f} s for {out['messages']})")
        print(f"POST answered (stored in the inbox)          p50 {out['ack_p50_ms']:6.1f} ms   p95 {out['ack_p95_ms']:6.1f} ms")
        print(f"POST -> visible in crm_whatsapp_list_messages p50 {out['visible_p50_ms']:6.1f} ms   "
              f"p95 {out['visible_p95_ms']:6.1f} ms   max {out['visible_max_ms']:6.1f} ms ({out['samples']} samples)")
        (RESULTS / "whatsapp.json").write_text(json.dumps({**out, "ratio_to_baseline": ratio}, indent=1))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
