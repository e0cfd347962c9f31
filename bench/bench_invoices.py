#!/usr/bin/env python
"""Invoice sync and totals benchmark (issue 13).

On a fresh database, one organization connected to a local FattureInCloud API (tests/fic_stub.py, the JSON shapes
of the real one) holding BENCH_INVOICES (default 10,000) issued invoices of last year:

1. Baseline: fetching every page (100 invoices each) through the official SDK alone, nothing stored: invoices/s.
2. Sync: `crm_invoices_sync` for the year, drained by the worker (`InvoiceSyncWorker.run_pending`, in this process):
   fetch, normalize, one append per page with the digests and seen-list, progress after each page. Invoices/s and
   the ratio to the fetch-only baseline. Then the projector applying those events (events/s), and a second sync of
   the same year (nothing changed upstream: nothing appended), invoices/s.
3. `crm_invoices_totals` for the year through the tool runner (validation, permissions, the query, the result),
   overall and per client: p50/p95 over BENCH_N calls, beside the p50 of a `SELECT 1` round trip on the same pool.

Usage (repository root, venv active): python bench/bench_invoices.py
Environment: BENCH_ADMIN_URL, BENCH_INVOICES (10000), BENCH_N (200), BENCH_KEEP_DB=1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from application import identity  # noqa: E402
from application.invoice_sync import FattureInCloud, InvoiceSyncWorker, SyncSettings  # noqa: E402
from application.migrate import migrate  # noqa: E402
from interfaces.database import create_database, drop_database  # noqa: E402
from interfaces.runtime import Runtime  # noqa: E402
from tests.fic_stub import FattureInCloudStub, document  # noqa: E402

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
INVOICES = int(os.environ.get("BENCH_INVOICES", "10000"))
N = int(os.environ.get("BENCH_N", "200"))
YEAR = dt.date.today().year - 1
RESULTS = ROOT / "bench" / "results"


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(sorted(samples), n=100, method="inclusive")[q - 1] * 1000


def main() -> None:
    name = f"flusia_bench_invoices_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    migrate(url)
    rt = Runtime(url, pool_size=8, consistency="settle")
    summary: dict[str, float] = {}
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench invoices", "admin@bench.example", "Admin")
            principal = identity.principal_for_token(conn, org.token)

        def call(tool: str, args: dict) -> dict:
            return anyio.run(rt.runner.call, principal, tool, args)

        with FattureInCloudStub(company_id=4242, token="bench-token") as stub:
            clients = [(f"Cliente {i:03d} Srl", f"IT{i:011d}") for i in range(400)]
            stub.add(*[document(i, day=dt.date(YEAR, 1, 1) + dt.timedelta(days=i % 365), client=clients[i % 400][0],
                                vat=clients[i % 400][1], net=str(50 + (i * 37) % 5000), paid=i % 3 == 0,
                                instalments=1 + i % 3) for i in range(1, INVOICES + 1)])
            settings = dataclasses.replace(SyncSettings.from_env(), base_url=stub.url)
            print(f"{INVOICES} invoices of {YEAR} in the local FattureInCloud API ({stub.url})", file=sys.stderr)

            # 1. baseline: the SDK fetching every page, storing nothing
            client = FattureInCloud(stub.token, settings)
            started = time.perf_counter()
            page, fetched = 1, 0
            while True:
                listed = client.list_page(4242, dt.date(YEAR, 1, 1), dt.date(YEAR, 12, 31), page, 100)
                fetched += len(listed.documents)
                if page >= listed.last_page:
                    break
                page += 1
            fetch_rate = fetched / (time.perf_counter() - started)
            client.close()

            # 2. the sync
            call("crm_settings_update_organization", {"fattureincloud": {"company_id": 4242, "access_token": stub.token}})
            worker = InvoiceSyncWorker(url, rt.store, settings=settings)
            call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})
            started = time.perf_counter()
            worker.run_pending()
            sync_seconds = time.perf_counter() - started
            with psycopg.connect(url, row_factory=dict_row) as conn:
                item = conn.execute("SELECT state, progress FROM invoice_sync_queue").fetchone()
            assert item["state"] == "done" and item["progress"]["created"] == INVOICES, item
            started = time.perf_counter()
            rt.settle()
            project_seconds = time.perf_counter() - started
            call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})
            started = time.perf_counter()
            worker.run_pending()
            resync_seconds = time.perf_counter() - started
            worker.close()

        # 3. totals
        args = {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"}
        first = call("crm_invoices_totals", args)["totals"][0]
        assert first["invoices"] == INVOICES, first
        timings: dict[str, list[float]] = {"overall": [], "by_client": [], "select1": [], "me": [], "sql": []}
        from application.organization import org_today
        from projections import invoices as invoices_q

        for _ in range(N):
            t0 = time.perf_counter()
            call("crm_users_me", {})
            timings["me"].append(time.perf_counter() - t0)
            with rt.pool.connection() as conn:
                t0 = time.perf_counter()
                invoices_q.totals(conn, org.organization_id, date_from=dt.date(YEAR, 1, 1), date_to=dt.date(YEAR, 12, 31),
                                  today=org_today(conn, org.organization_id))
                timings["sql"].append(time.perf_counter() - t0)
            for label, extra in (("overall", {}), ("by_client", {"by_client": True})):
                t0 = time.perf_counter()
                call("crm_invoices_totals", {**args, **extra})
                timings[label].append(time.perf_counter() - t0)
            with rt.pool.connection() as conn:
                t0 = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                timings["select1"].append(time.perf_counter() - t0)

        sync_rate = INVOICES / sync_seconds
        summary = {
            "invoices": INVOICES, "fetch_only_per_s": round(fetch_rate), "sync_per_s": round(sync_rate),
            "sync_vs_fetch": round(sync_rate / fetch_rate, 2), "sync_seconds": round(sync_seconds, 2),
            "projected_events_per_s": round(INVOICES / project_seconds), "resync_unchanged_per_s": round(INVOICES / resync_seconds),
            "totals_p50_ms": round(pct(timings["overall"], 50), 2), "totals_p95_ms": round(pct(timings["overall"], 95), 2),
            "totals_by_client_p50_ms": round(pct(timings["by_client"], 50), 2),
            "totals_by_client_p95_ms": round(pct(timings["by_client"], 95), 2),
            "select1_p50_ms": round(pct(timings["select1"], 50), 3), "me_p50_ms": round(pct(timings["me"], 50), 2),
            "totals_sql_p50_ms": round(pct(timings["sql"], 50), 2),
        }
        print(f"\nInvoice sync from the local FattureInCloud API, {INVOICES} invoices (100 per page)")
        print(f"  fetch only (SDK, nothing stored)      {summary['fetch_only_per_s']:>8} invoices/s   (baseline)")
        print(f"  crm_invoices_sync, worker             {summary['sync_per_s']:>8} invoices/s   "
              f"{summary['sync_vs_fetch']:.2f}x of the baseline ({sync_seconds:.1f} s)")
        print(f"  projecting the imported events        {summary['projected_events_per_s']:>8} events/s")
        print(f"  sync again, nothing changed upstream  {summary['resync_unchanged_per_s']:>8} invoices/s   (nothing appended)")
        print(f"\ncrm_invoices_totals over {INVOICES} invoices, {N} calls each through the tool runner")
        print(f"  overall        p50 {summary['totals_p50_ms']:7.2f} ms   p95 {summary['totals_p95_ms']:7.2f} ms")
        print(f"  per client     p50 {summary['totals_by_client_p50_ms']:7.2f} ms   p95 {summary['totals_by_client_p95_ms']:7.2f} ms")
        print(f"  its SQL alone  p50 {summary['totals_sql_p50_ms']:7.2f} ms")
        print(f"  crm_users_me   p50 {summary['me_p50_ms']:7.2f} ms   (the cheapest tool through the same runner: baseline)")
        print(f"  SELECT 1       p50 {summary['select1_p50_ms']:7.3f} ms   (round trip on the same pool)")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "invoices.json").write_text(json.dumps(summary, indent=1) + "\n")
    finally:
        rt.close()
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
