#!/usr/bin/env python
"""The ChatGPT connector's `search` (issue 17) over 100,000 clients and 100,000 deals, through HTTP (JSON-RPC).

Seeds N clients (realistic Italian names, bench_foundation's generator) and N deals on them through the domain and
the event store, projects them as production does, then starts `flusia serve` and measures p50/p95 of `search`
with an admin token for queries of several kinds (a business name, part of one, a typo, a deal title, words
matching nothing together, nothing at all). Baseline in the same run, timed alone while the server is idle:
`crm_users_me` through the same HTTP path (the fixed cost of a tool call). Target: search p50 < 30 ms.

Usage (repository root, venv active): python bench/bench_connector.py
Environment: BENCH_ADMIN_URL, BENCH_CLIENTS (default 100000), BENCH_DEALS (default 100000), BENCH_N (calls per
query kind, default 40), BENCH_KEEP_DB=1.
"""

from __future__ import annotations

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

from bench.bench_foundation import fake_client  # noqa: E402

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
N_CLIENTS = int(os.environ.get("BENCH_CLIENTS", "100000"))
N_DEALS = int(os.environ.get("BENCH_DEALS", "100000"))
N = int(os.environ.get("BENCH_N", "40"))
BATCH = 1000
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}
DEAL_WORDS = ["Sito web", "Impianto", "Manutenzione", "Fornitura", "Consulenza", "Rinnovo", "Gestionale", "Audit",
              "Formazione", "Campagna"]


def say(text: str) -> None:
    print(text, flush=True)


def seed(url: str, org_id: uuid.UUID) -> list[dict]:
    from domain.clients import Client
    from domain.deals import Deal
    from domain.pipelines import Pipeline
    from interfaces.runtime import Runtime

    rng = random.Random(17)
    rt = Runtime(url, pool_size=4)
    records: list[dict] = []
    try:
        pipeline = Pipeline.create_default(org_id)
        rt.store.save(pipeline)
        ids = []
        t = time.perf_counter()
        for start in range(0, N_CLIENTS, BATCH):
            batch = []
            for _ in range(min(BATCH, N_CLIENTS - start)):
                fields = fake_client(rng)
                records.append(fields)
                client = Client.create_lead(org_id, fields, None, None)
                ids.append(client.id)
                batch.append(client)
            rt.store.save(*batch)
        for start in range(0, N_DEALS, BATCH):
            batch = []
            for i in range(min(BATCH, N_DEALS - start)):
                title = f"{rng.choice(DEAL_WORDS)} {start + i}"
                batch.append(Deal.create(org_id, client_id=rng.choice(ids), title=title, pipeline=pipeline,
                                         stage_id=rng.choice(pipeline.stage_ids()), currency="EUR", owner_id=None,
                                         value_cents=rng.randrange(50_000, 5_000_000, 100), created_by=None))
            rt.store.save(*batch)
        say(f"seed: {N_CLIENTS:,} clients and {N_DEALS:,} deals saved as events in {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        for projection in rt.projections:  # every read model caught up: the server starts idle
            if projection.rebuildable:
                rt.projector.catch_up(projection)
        with rt.pool.connection() as conn:  # no workflow exists here: the trigger consumer has nothing to start
            conn.execute("INSERT INTO projection_tracking (name, position) SELECT n, (SELECT max(notification_id)"
                         " FROM stored_events) FROM unnest(%s::text[]) AS n ON CONFLICT (name) DO UPDATE"
                         " SET position = EXCLUDED.position", ([p.name for p in rt.projections if not p.rebuildable],))
        say(f"seed: projected in {time.perf_counter() - t:.0f}s")
        with rt.pool.connection() as conn:
            conn.execute("VACUUM ANALYZE")  # what autovacuum does after a bulk load
    finally:
        rt.close()
    return records


def queries(records: list[dict]) -> list[tuple[str, str]]:
    rng = random.Random(5)
    out = []
    for r in rng.sample(records, N):
        name = r["business_name"]
        words = name.split()
        typo = name[:3] + name[4:] if len(name) > 8 else name
        out += [("business name", name), ("one word of a name", max(words, key=len)), ("a typo", typo),
                ("deal title", f"{rng.choice(DEAL_WORDS)} {rng.randrange(N_DEALS)}"),
                ("words never together", f"{words[0]} {rng.choice(DEAL_WORDS).split()[0]}"),
                ("nothing at all", f"zq{rng.randrange(10**6)} xw{rng.randrange(10**6)}")]
    return out


def main() -> None:
    from application import identity
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database
    from tests.conftest import free_port

    name = f"flusia_bench_connector_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    server = None
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench", "bench@example.com")
        records = seed(url, org.organization_id)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)], cwd=ROOT,
                                  env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}/mcp"
        headers = {**HEADERS, "Authorization": f"Bearer {org.token}"}
        with httpx.Client(timeout=60) as http:
            for _ in range(600):
                try:
                    if http.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

            def timed(tool: str, arguments: dict) -> float:
                started = time.perf_counter()
                body = http.post(endpoint, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                                   "params": {"name": tool, "arguments": arguments}}).json()
                elapsed = time.perf_counter() - started
                assert not body["result"].get("isError"), body
                return elapsed * 1000

            for _ in range(20):
                timed("crm_users_me", {})
            baseline = [timed("crm_users_me", {}) for _ in range(N * 3)]
            by_kind: dict[str, list[float]] = {}
            plan = queries(records)
            for _, q in plan[:30]:
                timed("search", {"query": q})
            for kind, q in plan:
                by_kind.setdefault(kind, []).append(timed("search", {"query": q}))
        every = [s for samples in by_kind.values() for s in samples]
        p50 = statistics.median(every)
        say(f"\n{N_CLIENTS:,} clients, {N_DEALS:,} deals; {len(every)} searches through HTTP (JSON-RPC)")
        say(f"{'baseline crm_users_me':<34} p50 {statistics.median(baseline):7.2f} ms")
        for kind, samples in by_kind.items():
            say(f"search: {kind:<26} p50 {statistics.median(samples):7.2f} ms  p95 "
                f"{statistics.quantiles(samples, n=20)[-1]:7.2f} ms")
        say(f"{'search, all kinds':<34} p50 {p50:7.2f} ms  p95 {statistics.quantiles(every, n=20)[-1]:7.2f} ms"
            f"  target < 30 ms: {'PASS' if p50 < 30 else 'FAIL'}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if os.environ.get("BENCH_KEEP_DB") != "1":
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
