#!/usr/bin/env python
"""Workflow engine benchmark (issue 12): trigger-to-first-step latency and runs per second, beside the projector.

Starts the real server (`python -m interfaces.cli serve`: projector, trigger consumer and workflow engine in one
process) on a fresh database with one organization and one active workflow "when a deal is accepted, create a
kickoff task for its owner due in 2 days".

1. Latency: BENCH_N_LATENCY (default 100) deals accepted one after another through MCP (JSON-RPC over HTTP). For
   each, the time from the commit of its Deal.StatusChanged event to the commit of its run's first StepDone event,
   both read from the database (event_causes.recorded_at, the same clock): p50/p95. Target: p50 < 100 ms.
2. Throughput: BENCH_N_RUNS (default 1,000) deals accepted in one transaction (one append of 1,000 triggering
   events); runs per second from that commit to the last run's Finished event. Printed next to the projector's
   catch-up rate on the same events: the deals read model rebuilt from 0 in this run (events applied per second).
   The per-organization rate limit (FLUSIA_WORKFLOW_RUNS_PER_MINUTE) is raised for this phase, so the figure is
   the engine's, not the limit's.

Usage (repository root, venv active): python bench/bench_workflows.py
Environment: BENCH_ADMIN_URL, BENCH_N_LATENCY, BENCH_N_RUNS, BENCH_KEEP_DB=1.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
N_LATENCY = int(os.environ.get("BENCH_N_LATENCY", "100"))
N_RUNS = int(os.environ.get("BENCH_N_RUNS", "1000"))
RESULTS = ROOT / "bench" / "results"


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(sorted(samples), n=100, method="inclusive")[q - 1]


class Rpc:
    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(timeout=60)
        self.url = f"{base}/mcp"
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}

    def __call__(self, name: str, arguments: dict) -> dict:
        r = self.client.post(self.url, headers=self.headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        result = r.json()["result"]
        if result.get("isError"):
            raise RuntimeError(result["content"][0]["text"])
        return result["structuredContent"]


FIRST_STEP = """
SELECT t.recorded_at AS triggered, s.recorded_at AS first_step
FROM stored_events e
JOIN event_causes t ON e.notification_id BETWEEN t.first_notification_id AND t.last_notification_id
JOIN event_causes s ON s.workflow_run_id = workflow_run_id(%(workflow)s, 'event:' || e.notification_id)
JOIN stored_events d ON d.notification_id BETWEEN s.first_notification_id AND s.last_notification_id
WHERE e.originator_id = %(deal)s AND e.topic LIKE '%%Deal.StatusChanged' AND d.topic LIKE '%%WorkflowRun.StepDone'
ORDER BY s.first_notification_id LIMIT 1
"""


def wait_for(conn: psycopg.Connection, query: str, params: dict, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query, params).fetchone()
        if row is not None:
            return row
        if time.monotonic() > deadline:
            raise TimeoutError(query)
        time.sleep(0.005)


def main() -> None:
    from application import identity
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database
    from interfaces.runtime import Runtime
    from tests.conftest import free_port
    from tests.inprocess import call

    name = f"flusia_bench_wf_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench", "bench@example.com", "Bench Admin")
            principal = identity.principal_for_token(conn, org.token)
        port = free_port()
        log = open(RESULTS / "workflows-server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DATABASE_URL": url, "FLUSIA_WORKFLOW_RUNS_PER_MINUTE": "1000000"})
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rpc = Rpc(base, org.token)
        workflow = rpc("crm_workflows_create", {"name": "Kickoff"})
        rpc("crm_workflows_set_trigger", {"workflow_id": workflow["id"], "type": "deal_status_changed",
                                          "config": {"to_status": "accepted"}})
        rpc("crm_workflows_add_step", {"workflow_id": workflow["id"], "type": "create_task", "config": {
            "title": "Kickoff {{deal.title}}", "due_in_days": 2, "assignee_id": "{{deal.owner_id}}"}})
        rpc("crm_workflows_activate", {"workflow_id": workflow["id"]})
        lead = rpc("crm_clients_create_lead", {"business_name": "Cliente Bench"})
        wf_id = uuid.UUID(workflow["id"])

        # 1. latency, one trigger at a time
        latencies = []
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            for i in range(N_LATENCY):
                deal = rpc("crm_deals_create", {"title": f"Latency {i}", "client_id": lead["id"]})
                rpc("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
                row = wait_for(conn, FIRST_STEP, {"workflow": wf_id, "deal": uuid.UUID(deal["id"])})
                latencies.append((row["first_step"] - row["triggered"]).total_seconds() * 1000)

        # 2. throughput: 1,000 triggering events in one append
        rt = Runtime(url, pool_size=4, consistency="settle")
        try:
            from domain.deals import Deal

            ids = []
            for i in range(N_RUNS):
                ids.append(call(rt, principal, "crm_deals_create", {"title": f"Batch {i}", "client_id": lead["id"]})["id"])
            deals = [rt.store.repository.get(uuid.UUID(i)) for i in ids]
            for d in deals:
                assert isinstance(d, Deal)
                d.set_status("accepted", today=date.today())
            with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
                before = conn.execute("SELECT count(*) AS n FROM stored_events WHERE topic LIKE '%%WorkflowRun.Finished'"
                                      ).fetchone()["n"]
                rt.store.save(*deals, cause={"organization_id": org.organization_id, "user_id": org.user_id,
                                             "token_id": None, "oauth_client_id": None, "correlation_id": uuid.uuid4(),
                                             "tool": "bench", "workflow_run_id": None})
                committed = conn.execute(
                    "SELECT max(recorded_at) AS t FROM event_causes WHERE tool = 'bench'").fetchone()["t"]
                wait_for(conn, "SELECT 1 AS done FROM (SELECT count(*) AS n FROM stored_events WHERE topic LIKE"
                               " '%%WorkflowRun.Finished') f WHERE n >= %(want)s", {"want": before + N_RUNS}, 600)
                last = conn.execute(
                    "SELECT max(c.recorded_at) AS t FROM stored_events e JOIN event_causes c ON e.notification_id"
                    " BETWEEN c.first_notification_id AND c.last_notification_id"
                    " WHERE e.topic LIKE '%%WorkflowRun.Finished'").fetchone()["t"]
                failed = conn.execute("SELECT count(*) AS n FROM workflow_runs WHERE status <> 'succeeded'"
                                      ).fetchone()["n"]
            runs_seconds = (last - committed).total_seconds()
            # baseline: the projector catching up on the same deals' events (the deals read model from 0)
            started = time.perf_counter()
            report = rt.projector.rebuild_report(rt.projection("deals"))
            rebuild_seconds = time.perf_counter() - started
        finally:
            rt.close()
        out = {
            "latency_n": N_LATENCY, "latency_p50_ms": round(pct(latencies, 50), 1),
            "latency_p95_ms": round(pct(latencies, 95), 1), "latency_max_ms": round(max(latencies), 1),
            "runs": N_RUNS, "runs_seconds": round(runs_seconds, 2), "runs_per_s": round(N_RUNS / runs_seconds, 1),
            "runs_not_succeeded": failed,
            "projector_events": report["events_applied"], "projector_seconds": round(rebuild_seconds, 2),
            "projector_events_per_s": round(report["events_applied"] / rebuild_seconds, 1),
        }
        print(json.dumps(out, indent=1))
        verdict = "PASS" if out["latency_p50_ms"] < 100 else "FAIL"
        print(f"trigger commit -> first step recorded: p50 {out['latency_p50_ms']} ms, p95 {out['latency_p95_ms']} ms "
              f"(target p50 < 100 ms: {verdict})")
        print(f"{N_RUNS} triggering events -> {N_RUNS} runs in {out['runs_seconds']} s = {out['runs_per_s']} runs/s "
              f"(each run: context, Started, crm_tasks_create through the tool runner, StepDone, Finished); the "
              f"projector catches up on the same deals' events at {out['projector_events_per_s']} events/s "
              f"(deals read model from 0: {out['projector_events']} events)")
        (RESULTS / "workflows.json").write_text(json.dumps(out, indent=1))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
