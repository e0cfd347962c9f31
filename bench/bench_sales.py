#!/usr/bin/env python
"""Sales benchmark (issue 4). Standalone: not part of the test suite.

Seeds N deals (default 100,000) in one organization, across 3 pipelines and 10 owners, ~70% of them closed
(won or lost) with close dates spread over the last 400 days. Seeding goes through the domain (Deal
aggregates, their events saved with the event store in batches of 1,000) and the read tables are built by
the projector from those events, exactly as in production; nothing is COPYed into read tables.

Then measures p50/p95, through the Service in-process (`Service.call`: validation, permission check,
query handler, JSON-able result), of:
  - crm_stats_revenue for one year (totals + by pipeline / owner / month), target p50 < 50 ms
  - crm_pipelines_board of the largest pipeline (counts, totals and the 10 largest deals per stage), target < 50 ms
next to baselines measured in the same run on the same database and pool:
  - `SELECT 1` round trip
  - one indexed SELECT (a deal by primary key)
  - a trivial tool through the same Service path (crm_pipelines_list)

Usage (repository root, venv active):  python bench/bench_sales.py
Environment: BENCH_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres), BENCH_DEALS (default
100000), BENCH_N (samples per measurement, default 200), BENCH_KEEP_DB=1 keeps the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
N_DEALS = int(os.environ.get("BENCH_DEALS", "100000"))
N = int(os.environ.get("BENCH_N", "200"))
BATCH = 1000


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def fmt(name: str, samples: list[float]) -> str:
    return f"{name:<48} p50 {statistics.median(samples):8.2f} ms   p95 {pct(samples, 95):8.2f} ms   (n={len(samples)})"


def main() -> None:
    import psycopg
    from psycopg.rows import dict_row

    from application import identity
    from application.migrate import migrate
    from domain.deals import Deal
    from domain.pipelines import Pipeline
    from interfaces.runtime import Runtime
    from interfaces.database import create_database, drop_database

    name = f"flusia_bench_sales_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    t0 = time.perf_counter()
    try:
        migrate(url)
        rt = Runtime(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench Sales", "bench@example.com", "Bench")
            principal = identity.principal_for_token(conn, org.token)
        org_id = org.organization_id
        rng = random.Random(42)
        owners = [uuid.uuid4() for _ in range(10)]
        clients = [uuid.uuid4() for _ in range(2000)]
        pipelines = [Pipeline.create_default(org_id),
                     Pipeline.create(org_id, "Enterprise", [("Discovery", 20), ("Offer", 50), ("Negotiation", 80)]),
                     Pipeline.create(org_id, "Renewals", [("Due", 40), ("Quoted", 70)])]
        rt.store.save(*pipelines)
        today = dt.date.today()

        # -- seed through the domain and the event store ---------------------------------------------------
        seeded = 0
        t_seed = time.perf_counter()
        while seeded < N_DEALS:
            batch = []
            for _ in range(min(BATCH, N_DEALS - seeded)):
                p = pipelines[rng.choices((0, 1, 2), weights=(6, 3, 1))[0]]
                deal = Deal.create(org_id, client_id=rng.choice(clients), title=f"Deal {seeded}", pipeline=p,
                                   stage_id=rng.choice(p.stage_ids()), currency="EUR", owner_id=rng.choice(owners),
                                   value_cents=rng.randrange(50_000, 10_000_000, 100), created_by=None)
                r = rng.random()
                if r < 0.7:
                    deal.set_status("accepted" if r < 0.3 else "rejected", today=today,
                                    close_date=today - dt.timedelta(days=rng.randrange(0, 400)))
                batch.append(deal)
                seeded += 1
            rt.store.save(*batch)
            if seeded % 20000 == 0:
                print(f"  seeded {seeded:,} deals ({time.perf_counter() - t_seed:.0f}s)", flush=True)
        seed_s = time.perf_counter() - t_seed

        # -- project (only the projections these tools read) -------------------------------------------------
        t_proj = time.perf_counter()
        events = 0
        for p in (rt.projection("pipelines"), rt.projection("deals")):
            events += rt.projector.catch_up(p)
        proj_s = time.perf_counter() - t_proj
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # what autovacuum does in steady state: visibility map for index-only scans
            n_rows = conn.execute("SELECT count(*) FROM deals").fetchone()[0]
            sample_id = conn.execute("SELECT id FROM deals ORDER BY id LIMIT 1").fetchone()[0]
        print(f"seeded {N_DEALS:,} deals in {seed_s:.1f}s; projected {events:,} events in {proj_s:.1f}s; deals rows {n_rows:,}")

        # -- measure ----------------------------------------------------------------------------------------
        start, end = (today - dt.timedelta(days=365)).isoformat(), today.isoformat()
        revenue_args = {"start_date": start, "end_date": end}
        board_args = {"pipeline_id": str(pipelines[0].id), "deals_per_stage": 10}

        def sql_timer(sql: str, params: tuple = ()) -> list[float]:
            out = []
            for i in range(N + 20):
                t = time.perf_counter()
                with rt.pool.connection() as conn:
                    conn.execute(sql, params).fetchall()
                if i >= 20:
                    out.append((time.perf_counter() - t) * 1000)
            return out

        async def tool_timer(tool: str, args: dict) -> list[float]:
            out = []
            for i in range(N + 20):
                t = time.perf_counter()
                await rt.runner.call(principal, tool, args)
                if i >= 20:
                    out.append((time.perf_counter() - t) * 1000)
            return out

        base_select1 = sql_timer("SELECT 1")
        base_pk = sql_timer("SELECT * FROM deals WHERE organization_id = %s AND id = %s", (org_id, sample_id))
        base_tool = asyncio.run(tool_timer("crm_pipelines_list", {}))
        revenue = asyncio.run(tool_timer("crm_stats_revenue", revenue_args))
        board = asyncio.run(tool_timer("crm_pipelines_board", board_args))
        sample = asyncio.run(rt.runner.call(principal, "crm_stats_revenue", revenue_args))

        print()
        print(f"Sales bench: {N_DEALS:,} deals, PostgreSQL at {ADMIN.rsplit('@', 1)[-1]}, Service in-process")
        print("baselines (same run, same pool):")
        print("  " + fmt("SELECT 1 round trip", base_select1))
        print("  " + fmt("indexed SELECT (deal by primary key)", base_pk))
        print("  " + fmt("crm_pipelines_list via Service.call", base_tool))
        print("measured:")
        for label, s in (("crm_stats_revenue (one year)", revenue), ("crm_pipelines_board (largest pipeline)", board)):
            ok = "OK" if statistics.median(s) < 50 else "OVER TARGET"
            print(f"  {fmt(label, s)}   x{statistics.median(s) / statistics.median(base_pk):.1f} indexed SELECT   "
                  f"target p50<50ms: {ok}")
        print(f"  (one-year revenue: {sample['total_revenue']['formatted']}, won {sample['deals_won']:,}, "
              f"lost {sample['deals_lost']:,}, win rate {sample['win_rate']['percent']}%)")
        print(f"total bench time {time.perf_counter() - t0:.0f}s")
        rt.close()
    finally:
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
