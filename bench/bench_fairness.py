#!/usr/bin/env python
"""Tenant fairness benchmark (issue 8): one organization saturating slow searches must not hold another up.

Starts the real server (`python -m interfaces.cli serve`) on a fresh database with two organizations:
- A owns 50 wiki pages of ~199 KB each ("lorem ipsum" text: every search matches every page);
- B owns 200 clients.
Phase 1 (server idle): B's `crm_clients_list` p50/p95 over BENCH_N sequential JSON-RPC calls.
Phase 2: A runs BENCH_A_WORKERS (default 16) concurrent loops of
`crm_wiki_search {"q": "\\"lorem ipsum\\"", "limit": 50}` while B repeats the same sequential list calls.
Prints B's p50 idle and under A's load, their ratio (target <= 3x), and A's throughput and p50.

Usage (repository root, venv active): python bench/bench_fairness.py
Environment: BENCH_ADMIN_URL, BENCH_N (default 200), BENCH_A_WORKERS (default 16), BENCH_KEEP_DB=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
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

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
N = int(os.environ.get("BENCH_N", "200"))
A_WORKERS = int(os.environ.get("BENCH_A_WORKERS", "16"))
RESULTS = ROOT / "bench" / "results"
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore".split()


def p(samples: list[float], q: int) -> float:
    return statistics.quantiles(sorted(samples), n=100, method="inclusive")[q - 1] * 1000


class Rpc:
    def __init__(self, client: httpx.AsyncClient, url: str, token: str) -> None:
        self.client, self.url = client, url
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}

    async def call(self, name: str, arguments: dict) -> dict:
        r = await self.client.post(self.url, headers=self.headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        result = r.json()["result"]
        if result.get("isError"):
            raise RuntimeError(json.loads(result["content"][0]["text"])["error"]["code"])
        return result["structuredContent"]


async def timed_b_calls(b: Rpc) -> list[float]:
    samples = []
    for _ in range(N):
        started = time.perf_counter()
        await b.call("crm_clients_list", {"limit": 25})
        samples.append(time.perf_counter() - started)
    return samples


async def run(base: str, token_a: str, token_b: str) -> dict:
    limits = httpx.Limits(max_connections=A_WORKERS + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        a, b = Rpc(http, f"{base}/mcp", token_a), Rpc(http, f"{base}/mcp", token_b)
        rng = random.Random(1)
        body = " ".join(rng.choice(WORDS) for _ in range(33000))[:199_000]
        for i in range(50):
            await a.call("crm_wiki_create_page", {"title": f"Lorem {i}", "body": body})
        for i in range(200):
            await b.call("crm_clients_create_lead", {"business_name": f"Cliente {i} Srl"})
        await b.call("crm_clients_list", {})
        idle = await timed_b_calls(b)

        stop = asyncio.Event()
        a_samples: list[float] = []
        a_errors: dict[str, int] = {}

        async def a_worker() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await a.call("crm_wiki_search", {"q": '"lorem ipsum"', "limit": 50})
                    a_samples.append(time.perf_counter() - started)
                except RuntimeError as e:
                    a_errors[str(e)] = a_errors.get(str(e), 0) + 1

        workers = [asyncio.create_task(a_worker()) for _ in range(A_WORKERS)]
        await asyncio.sleep(2.0)  # A's burst is under way
        started = time.perf_counter()
        loaded = await timed_b_calls(b)
        window = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*workers)
    return {"b_idle_p50_ms": round(p(idle, 50), 2), "b_idle_p95_ms": round(p(idle, 95), 2),
            "b_loaded_p50_ms": round(p(loaded, 50), 2), "b_loaded_p95_ms": round(p(loaded, 95), 2),
            "ratio_p50": round(p(loaded, 50) / p(idle, 50), 2),
            "a_searches": len(a_samples), "a_searches_per_s": round(len(a_samples) / (window + 2.0), 1),
            "a_p50_ms": round(p(a_samples, 50), 1) if len(a_samples) > 1 else None, "a_errors": a_errors}


def main() -> None:
    from application import identity
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database
    from tests.conftest import free_port

    name = f"flusia_bench_fair_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            a = identity.create_organization(conn, "Alfa (saturates)", "a@alfa.example")
            b = identity.create_organization(conn, "Beta (measured)", "b@beta.example")
        port = free_port()
        log = open(RESULTS / "fairness-server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)], cwd=ROOT,
                                  env={**os.environ, "DATABASE_URL": url}, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        out = asyncio.run(run(base, a.token, b.token))
        print(json.dumps(out, indent=1))
        verdict = "PASS" if out["ratio_p50"] <= 3 else "FAIL"
        print(f"B crm_clients_list p50 idle {out['b_idle_p50_ms']} ms, while A saturates {A_WORKERS} slow searches "
              f"{out['b_loaded_p50_ms']} ms = {out['ratio_p50']}x (target <= 3x: {verdict}); A ran "
              f"{out['a_searches']} searches ({out['a_searches_per_s']}/s, p50 {out['a_p50_ms']} ms)")
        (RESULTS / "fairness.json").write_text(json.dumps(out, indent=1))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
