#!/usr/bin/env python
"""Scale benchmark (issue 16): projection rebuild throughput and broad one-word client search.

Standalone, not part of the test suite. Against a fresh database on the local PostgreSQL it:

1. seeds BENCH_EVENTS events (default 1,000,000) through the event store's own recorder, in batches: a
   realistic mix over several organizations (leads and clients with updates, tags, contacts and status
   changes; deals with stage moves and closes; tasks, some completed; activities; notes). The first
   organization holds about half of the clients (100,000 at the default size), the one searched in part 3;
2. rebuilds every projection from 0 (`Projector.rebuild_report`, what `flusia projections rebuild` runs) and
   prints per projection: events, seconds, events/s, next to the raw replay rate of the same events (read
   from the event store in batches and decoded, no projection work). Target: >= 30,000 events/s;
3. starts the real server (`python -m interfaces.cli serve`) and times broad one-word `crm_clients_search`
   queries ("Srl", "Studio", a common surname, ...) over that organization's clients as JSON-RPC
   `tools/call` over HTTP: p50/p95 per query. Target: p50 < 20 ms.

Usage (from the repository root):  .venv/bin/python bench/bench_scale.py
Environment: BENCH_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres), BENCH_EVENTS
(default 1000000), BENCH_N_SEARCH (timed calls per query, default 40), BENCH_ONLY (comma-separated
projection names to rebuild; default all), BENCH_SKIP_SEARCH=1, BENCH_KEEP_DB=1 to keep the database.
Writes bench/results/scale.json. The machine may be shared: numbers are noisy.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_foundation import LAST, fake_client  # noqa: E402  (realistic Italian names, deterministic)

RESULTS = ROOT / "bench" / "results"
ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
N_EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
N_SEARCH = int(os.environ.get("BENCH_N_SEARCH", "40"))
N_ORGS = 4
SAVE_BATCH = 2000
TARGET_EVENTS_PER_S = 30_000
TARGET_SEARCH_P50_MS = 20.0
BROAD_QUERIES = ["Srl", "Studio", "Rossi", "Ristorante", "Bianchi", "Milano"]

T0 = time.monotonic()


def say(msg: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


def pct(samples: list[float], p: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


# -- seeding -------------------------------------------------------------------------------------------------
class Seeder:
    """Aggregates made with the domain's own methods and saved by the event store in batches. The shares below are
    of all events: clients ~42% (creates 20%, updates 10%, tags 5%, contacts 5%, status 2%), deals ~14%, tasks
    ~15%, activities ~15%, notes ~14%."""

    def __init__(self, rt: Any, orgs: list[tuple[uuid.UUID, uuid.UUID]], n_events: int) -> None:
        self.rt, self.orgs, self.n = rt, orgs, n_events
        self.rng = random.Random(20261127)
        self.pending: list[Any] = []
        self.pending_events = 0
        self.saved = 0
        self.clients: list[list[Any]] = [[] for _ in orgs]
        self.deals: list[list[Any]] = [[] for _ in orgs]
        self.tasks: list[list[Any]] = [[] for _ in orgs]
        self.pipelines: list[Any] = []

    def org(self) -> int:
        """The first organization gets half of everything, the others share the rest."""
        return 0 if self.rng.random() < 0.5 else self.rng.randrange(1, len(self.orgs))

    def add(self, aggregate: Any) -> None:
        self.pending.append(aggregate)
        self.pending_events += len(aggregate.pending_events)
        if self.pending_events >= SAVE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.rt.store.save(*self.pending)
            self.saved += self.pending_events
            self.pending, self.pending_events = [], 0
            if self.saved // 50_000 != (self.saved - SAVE_BATCH) // 50_000:
                say(f"seed: {self.saved:,}/{self.n:,} events saved")

    def when(self) -> datetime:
        return datetime(2026, 1, 1, 9, tzinfo=timezone.utc) + timedelta(minutes=self.rng.randrange(0, 500_000))

    def run(self) -> None:
        from domain.activities import Activity
        from domain.clients import Client
        from domain.deals import Deal
        from domain.notes import Note
        from domain.pipelines import Pipeline
        from domain.tasks import Task

        rng, n = self.rng, self.n
        for org_id, _ in self.orgs:
            pipeline = Pipeline.create_default(org_id)
            self.pipelines.append(pipeline)
            self.add(pipeline)
        # rounds of: create clients, then work on what exists (updates, deals, tasks, activities, notes)
        rounds = 10
        for r in range(rounds):
            for _ in range(int(n * 0.20 / rounds)):
                o = self.org()
                org_id, user_id = self.orgs[o]
                maker = Client.create_lead if rng.random() < 0.7 else Client.create_client
                fields = fake_client(rng)
                if rng.random() < 0.5:  # people write the legal form both ways
                    fields["business_name"] = fields["business_name"].replace("S.r.l.", "Srl").replace("S.n.c.", "Snc")
                client = maker(org_id, fields, user_id if rng.random() < 0.5 else None, user_id)
                self.clients[o].append(client)
                self.add(client)
            self.flush()
            for _ in range(int(n * 0.10 / rounds)):
                c = self.pick(self.clients)
                c.update({"website": f"https://www.example{rng.randrange(10**6)}.it",
                          **({"contact_name": fake_client(rng)["contact_name"]} if rng.random() < 0.3 else {})})
                self.add(c)
            for _ in range(int(n * 0.05 / rounds)):
                c = self.pick(self.clients)
                c.add_tag(rng.choice(["vip", "fiera2026", "newsletter", "estero", "da richiamare", "b2b"]))
                self.add(c)
            for _ in range(int(n * 0.05 / rounds)):
                c = self.pick(self.clients)
                first = fake_client(rng)["contact_name"]
                c.add_contact({"name": first, "role": rng.choice(["titolare", "amministrazione", "acquisti"]),
                               "email": f"{first.split()[0].lower()}@example.it"})
                self.add(c)
            for _ in range(int(n * 0.02 / rounds)):
                c = self.pick(self.clients)
                if c.kind == "lead":
                    c.set_status(rng.choice(["contacted", "qualified", "unqualified"]))
                    self.add(c)
            for _ in range(int(n * 0.08 / rounds)):
                o = self.org()
                if not self.clients[o]:
                    continue
                client = rng.choice(self.clients[o])
                deal = Deal.create(self.orgs[o][0], client_id=client.id, title=f"Offerta {client.business_name}"[:120],
                                   pipeline=self.pipelines[o], stage_id=None, currency="EUR",
                                   owner_id=self.orgs[o][1], value_cents=rng.randrange(10_000, 5_000_000),
                                   created_by=self.orgs[o][1])
                self.deals[o].append(deal)
                self.add(deal)
            for _ in range(int(n * 0.06 / rounds)):
                o = self.org()
                if not self.deals[o]:
                    continue
                deal = rng.choice(self.deals[o])
                if deal.status != "open":
                    continue
                if rng.random() < 0.7:
                    deal.move_to(self.pipelines[o], rng.choice(self.pipelines[o].stage_ids()))
                else:
                    deal.set_status(rng.choice(["accepted", "rejected"]), today=date(2026, 11, 27))
                self.add(deal)
            for _ in range(int(n * 0.10 / rounds)):
                o = self.org()
                client = rng.choice(self.clients[o]) if self.clients[o] else None
                task = Task(org_id=self.orgs[o][0], fields={
                    "title": f"Richiamare {client.business_name if client else 'cliente'}"[:200],
                    "due_date": date(2026, 1, 1) + timedelta(days=rng.randrange(0, 400)),
                    "priority": rng.choice(["low", "normal", "normal", "high"]),
                    "client_id": client.id if client else None}, assignee_id=self.orgs[o][1],
                    created_by=self.orgs[o][1])
                self.tasks[o].append(task)
                self.add(task)
            for _ in range(int(n * 0.05 / rounds)):
                o = self.org()
                if self.tasks[o]:
                    task = rng.choice(self.tasks[o])
                    if task.status == "open":
                        task.complete()
                        self.add(task)
            for _ in range(int(n * 0.15 / rounds)):
                o = self.org()
                if not self.clients[o]:
                    continue
                client = rng.choice(self.clients[o])
                self.add(Activity.log(self.orgs[o][0], rng.choice(["call", "email", "meeting"]), client_id=client.id,
                                      deal_id=None, user_id=self.orgs[o][1], occurred_at=self.when(),
                                      subject=f"Contatto con {client.contact_name}",
                                      body="Sentito il cliente, interessato all'offerta.",
                                      created_by=self.orgs[o][1]))
            for _ in range(int(n * 0.14 / rounds)):
                o = self.org()
                if not self.clients[o]:
                    continue
                client = rng.choice(self.clients[o])
                self.add(Note(org_id=self.orgs[o][0], subject_type="client", subject_id=client.id,
                              body=f"Nota su {client.business_name}: richiede preventivo entro fine mese.",
                              author_id=self.orgs[o][1]))
            self.flush()
        while self.saved < n:  # what the rounds skipped (a closed deal not moved, a done task), as activities
            o = self.org()
            client = rng.choice(self.clients[o] or self.clients[0])
            self.add(Activity.log(client.org_id, "call", client_id=client.id, deal_id=None, user_id=self.orgs[o][1],
                                  occurred_at=self.when(), subject="Richiamato", created_by=self.orgs[o][1]))
            if self.pending_events >= n - self.saved:
                self.flush()

    def pick(self, per_org: list[list[Any]]) -> Any:
        o = self.org()
        return self.rng.choice(per_org[o] or per_org[0])


# -- raw replay and rebuilds -----------------------------------------------------------------------------------
def raw_replay(rt: Any, topics: list[str], batch: int) -> tuple[int, float]:
    """Read and decode the events of `topics` from the event store in batches of `batch` (their personal-data keys
    fetched per batch, as the projector does): no projection work."""
    from projections.projector import _notification

    decode = rt.projector.decode
    n, position = 0, 0
    t = time.perf_counter()
    with rt.projector_pool.connection() as conn, conn.cursor(row_factory=__import__("psycopg").rows.tuple_row) as cur:
        while True:
            rows = cur.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state FROM stored_events"
                " WHERE notification_id > %s AND topic = ANY(%s) ORDER BY notification_id LIMIT %s",
                (position, topics, batch)).fetchall()
            notifications = [_notification(r) for r in rows]
            if rt.projector.prefetch is not None:  # as the projector does: a batch's keys in one query
                rt.projector.prefetch([x.state for x in notifications])
            for x in notifications:
                decode(x)
            n += len(rows)
            if len(rows) < batch:
                break
            position = rows[-1][0]
    return n, time.perf_counter() - t


def rebuilds(url: str, only: set[str] | None) -> list[dict[str, Any]]:
    from interfaces.runtime import Runtime

    rt = Runtime(url, pool_size=2, consistency="settle")
    out = []
    try:
        for p in rt.projections:
            if only and p.name not in only or not p.rebuildable:
                continue
            raw_n, raw_s = raw_replay(rt, p.topics(), rt.projector.batch_size)
            if raw_n == 0:
                continue
            t = time.perf_counter()
            report = rt.projector.rebuild_report(p)
            seconds = time.perf_counter() - t
            row = {"projection": p.name, "events": report["events_applied"], "seconds": round(seconds, 2),
                   "events_per_s": round(report["events_applied"] / seconds), "raw_events": raw_n,
                   "raw_events_per_s": round(raw_n / raw_s), "parked": len(report["parked"])}
            row["pass"] = row["events_per_s"] >= TARGET_EVENTS_PER_S
            say(f"rebuild {p.name}: {row['events']:,} events in {seconds:.1f}s = {row['events_per_s']:,}/s"
                f" (raw replay {row['raw_events_per_s']:,}/s)")
            out.append(row)
    finally:
        rt.close()
    with __import__("psycopg").connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum would do after a bulk load
    return out


# -- broad search over the real server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = RESULTS / "scale-server.log"
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "DATABASE_URL": url}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def broad_search(mcp_url: str, token: str, queries: list[str]) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=60, headers=headers) as http:
        ids = iter(range(1, 10**9))

        async def call(q: str) -> tuple[float, dict[str, Any]]:
            body = {"jsonrpc": "2.0", "id": next(ids), "method": "tools/call",
                    "params": {"name": "crm_clients_search", "arguments": {"q": q}}}
            t = time.perf_counter()
            r = await http.post(mcp_url, json=body)
            dt = time.perf_counter() - t
            r.raise_for_status()
            result = r.json()["result"]
            if result.get("isError"):
                raise RuntimeError(f"search {q!r} failed: {result['content']}")
            return dt, result["structuredContent"]

        for q in queries:  # warm-up
            for _ in range(3):
                await call(q)
        for q in queries:
            samples, found = [], {}
            for _ in range(N_SEARCH):
                dt, found = await call(q)
                samples.append(dt * 1000)
            items = found.get("items", [])
            out[q] = {"n": len(samples), "p50_ms": round(pct(samples, 50), 2), "p95_ms": round(pct(samples, 95), 2),
                      "hits": len(items), "match": found.get("match"),
                      "top": [i.get("business_name") for i in items[:3]]}
            out[q]["pass"] = out[q]["p50_ms"] < TARGET_SEARCH_P50_MS
            say(f"search {q!r}: p50 {out[q]['p50_ms']} ms, p95 {out[q]['p95_ms']} ms, top {out[q]['top']}")
    return out


# -- main ----------------------------------------------------------------------------------------------------
def summarize(res: dict[str, Any]) -> str:
    lines = [f"Scale benchmark: {res['events']:,} events over {N_ORGS} organizations"
             f" ({res['clients_searched']:,} clients in the searched one); shared machine, numbers are noisy", "",
             f"{'projection':<14} {'events':>10} {'seconds':>8} {'events/s':>10} {'raw replay/s':>13}  target >= "
             f"{TARGET_EVENTS_PER_S:,}/s"]
    for r in res["rebuild"]:
        lines.append(f"{r['projection']:<14} {r['events']:>10,} {r['seconds']:>8.1f} {r['events_per_s']:>10,}"
                     f" {r['raw_events_per_s']:>13,}  {'PASS' if r['pass'] else 'FAIL'}")
    if res.get("search"):
        lines += ["", f"{'broad query':<14} {'p50 ms':>8} {'p95 ms':>8} {'hits':>5}  target p50 < {TARGET_SEARCH_P50_MS:g} ms"]
        for q, s in res["search"].items():
            lines.append(f"{q:<14} {s['p50_ms']:>8.2f} {s['p95_ms']:>8.2f} {s['hits']:>5}  {'PASS' if s['pass'] else 'FAIL'}"
                         f"  {', '.join(str(t) for t in s['top'])}")
    return "\n".join(lines)


def main() -> None:
    import psycopg
    from psycopg.rows import dict_row

    from application import identity
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database
    from interfaces.runtime import Runtime

    RESULTS.mkdir(parents=True, exist_ok=True)
    admin_url = os.environ.get("BENCH_ADMIN_URL", ADMIN_DEFAULT)
    db_name = f"flusia_scale_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, db_name)
    say(f"database {db_name} created")
    server = None
    res: dict[str, Any] = {"events_requested": N_EVENTS}
    try:
        migrate(url)
        orgs, tokens = [], []
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            for i in range(N_ORGS):
                org = identity.create_organization(conn, f"Scale {i}", f"admin{i}@example.com", f"Admin {i}")
                orgs.append((org.organization_id, org.user_id))
                tokens.append(org.token)
        rt = Runtime(url, pool_size=2, consistency="settle")
        try:
            t = time.perf_counter()
            seeder = Seeder(rt, orgs, N_EVENTS)
            seeder.run()
            res["seed_s"] = round(time.perf_counter() - t, 1)
            res["clients_searched"] = len(seeder.clients[0])
            del seeder
        finally:
            rt.close()
        with psycopg.connect(url, autocommit=True) as conn:
            res["events"] = conn.execute("SELECT count(*) FROM stored_events").fetchone()[0]
            conn.execute("VACUUM ANALYZE stored_events")
        say(f"seeded {res['events']:,} events in {res['seed_s']}s")
        only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s} or None
        res["rebuild"] = rebuilds(url, only)
        if os.environ.get("BENCH_SKIP_SEARCH") != "1":
            server, port = start_server(url)
            say(f"server on :{port}; broad searches over {res['clients_searched']:,} clients")
            res["search"] = asyncio.run(broad_search(f"http://127.0.0.1:{port}/mcp", tokens[0], BROAD_QUERIES))
        res["elapsed_s"] = round(time.monotonic() - T0, 1)
        (RESULTS / "scale.json").write_text(json.dumps(res, indent=2, default=str))
        print(summarize(res))
    finally:
        stop(server)
        if os.environ.get("BENCH_KEEP_DB") == "1":
            say(f"kept database {db_name}: {url}")
        else:
            drop_database(admin_url, db_name)
            say(f"database {db_name} dropped")


if __name__ == "__main__":
    main()
