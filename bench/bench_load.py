#!/usr/bin/env python
"""Load benchmark for Flusia CRM (issue 16): throughput and tail latency of the real server under many clients.

N concurrent MCP clients (default 16, spread over a few organizations) call tools as JSON-RPC `tools/call`
over HTTP/1.1 keep-alive, one `initialize` per client first, each sending its next call as soon as the
previous one answered (closed loop). The mix is 60% reads and 40% writes over clients, deals and tasks:

    reads   crm_clients_get 15, crm_clients_search 10, crm_deals_get 10, crm_deals_list 10,
            crm_tasks_get 8, crm_tasks_list 7
    writes  crm_clients_create_lead 10, crm_clients_update 6, crm_deals_create 8, crm_deals_update 6,
            crm_tasks_create 6, crm_tasks_update 4

The same closed loop then runs against a bare Litestar endpoint (bench_foundation.py's baseline: uvicorn with
the same uvloop/httptools settings, psycopg pool) doing 60% `SELECT ... WHERE id` and 40% `INSERT`, timed in
its own phase while our server is idle (projections caught up), for the ratio.

Target: >= 600 calls/s with p99 < 100 ms and 0 errors on a 2-core machine.

The load generator shares the machine's cores with the server and PostgreSQL, so it is kept cheap: one process,
uvloop, raw asyncio HTTP/1.1 with pre-serialised request bytes (a counter spliced in), no JSON parsing of the
answers (errors are found by bytes). It prints the CPU it used, the server's, and how busy the whole machine was
(other engineers' work shows there).

`--minutes M` then runs a soak at the same load for M minutes: errors, calls/s per minute and the server's RSS
(summed over its processes) after a warm-up (the first minute, or a tenth of the soak) and at the end;
target growth < 10%. `--workers N` passes `--workers N` to `flusia serve` when that option exists (otherwise
one process is run and the output says so).

Usage (repository root):  .venv/bin/python bench/bench_load.py [--clients 16] [--seconds 30] [--minutes 10]
                          [--workers N] [--orgs 4]
Environment: BENCH_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres), BENCH_KEEP_DB=1.
Writes bench/results/load.json and the server log bench/results/load-server.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_foundation import (ADMIN_DEFAULT, fake_client, free_port, stop,  # noqa: E402
                                    wait_port)

RESULTS = ROOT / "bench" / "results"
TARGET_CALLS_PER_S = 600
TARGET_P99_MS = 100.0
TARGET_RSS_GROWTH = 0.10
PROTOCOL = "2025-11-25"

READS = {"crm_clients_get": 15, "crm_clients_search": 10, "crm_deals_get": 10, "crm_deals_list": 10,
         "crm_tasks_get": 8, "crm_tasks_list": 7}
WRITES = {"crm_clients_create_lead": 10, "crm_clients_update": 6, "crm_deals_create": 8, "crm_deals_update": 6,
          "crm_tasks_create": 6, "crm_tasks_update": 4}
SEARCH_WORDS = ["Rossi", "Pizzeria", "Studio", "Ferramenta", "Bianchi", "Milano", "Hotel", "Costruzioni",
                "Esposito", "Officina", "Farmacia", "Roma"]

T0 = time.monotonic()


def say(msg: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - T0:6.1f}s] {msg}\n")
    sys.stderr.flush()


def pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100 * (len(sorted_ms) - 1)))))
    return sorted_ms[k]


# ---------------------------------------------------------------------------------------------------------
# A minimal keep-alive HTTP/1.1 client: the load generator must cost little CPU
# ---------------------------------------------------------------------------------------------------------
class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"content-length:")
        if i >= 0:
            j = lower.find(b"\r\n", i)
            body = await self.reader.readexactly(int(head[i + 15:j]))
        elif b"transfer-encoding: chunked" in lower:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = b""
        if b"connection: close" in lower:
            self.writer.close()
            self.writer = None
        return status, body


def http_request(method: str, path: str, port: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Template:
    """A request whose bytes are built once: `render(i)` splices a counter into the body (distinct names)."""

    MARK = "\x00N\x00"

    def __init__(self, method: str, path: str, port: int, headers: dict[str, str], body: Any) -> None:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body is not None else ""
        parts = text.split(json.dumps(self.MARK)[1:-1]) if body is not None else [""]
        self.parts = [p.encode() for p in parts]
        self.head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items())
        self.method = method
        if len(self.parts) == 1:
            self.fixed = self._build(self.parts[0])

    def _build(self, body: bytes) -> bytes:
        if self.method == "GET":
            return (self.head + "\r\n").encode()
        return (self.head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def render(self, i: int) -> bytes:
        if len(self.parts) == 1:
            return self.fixed
        return self._build(str(i).encode().join(self.parts))


# ---------------------------------------------------------------------------------------------------------
# What each client sends
# ---------------------------------------------------------------------------------------------------------
@dataclass
class OrgWorld:
    token: str
    clients: list[str] = field(default_factory=list)
    deals: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)


def rpc(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def mcp_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL}


def ours_templates(world: OrgWorld, port: int, rng: random.Random, n: int) -> list[tuple[str, Template]]:
    """`n` calls of the mix for one client, pre-serialised (cycled through during the run)."""
    h = mcp_headers(world.token)
    m = Template.MARK
    names = list(READS) + list(WRITES)
    weights = list(READS.values()) + list(WRITES.values())
    out = []
    for _ in range(n):
        name = rng.choices(names, weights)[0]
        c, d, t = rng.choice(world.clients), rng.choice(world.deals), rng.choice(world.tasks)
        args: dict[str, Any] = {
            "crm_clients_get": lambda: {"client_id": c},
            "crm_clients_search": lambda: {"q": rng.choice(SEARCH_WORDS), "limit": 10},
            "crm_deals_get": lambda: {"deal_id": d},
            "crm_deals_list": lambda: {"limit": 10},
            "crm_tasks_get": lambda: {"task_id": t},
            "crm_tasks_list": lambda: {"limit": 10},
            "crm_clients_create_lead": lambda: {**fake_client(rng), "business_name":
                                                f"{fake_client(rng)['business_name']} {m}"},
            "crm_clients_update": lambda: {"client_id": c, "phone": f"+39 02 {m}"},
            "crm_deals_create": lambda: {"title": f"Fornitura {m}", "client_id": c, "value": rng.randrange(100, 90000)},
            "crm_deals_update": lambda: {"deal_id": d, "description": f"Revisione {m}"},
            "crm_tasks_create": lambda: {"title": f"Richiamare {m}", "client_id": c, "priority": "normal"},
            "crm_tasks_update": lambda: {"task_id": t, "description": f"Aggiornato {m}"},
        }[name]()
        out.append((name, Template("POST", "/mcp", port, h, rpc(name, args))))
    return out


def bare_templates(ids: list[str], port: int, rng: random.Random, n: int) -> list[tuple[str, Template]]:
    h = {"Content-Type": "application/json"}
    out = []
    for _ in range(n):
        if rng.random() < 0.6:
            out.append(("bare_select", Template("GET", f"/leads/{rng.choice(ids)}", port, {}, None)))
        else:
            out.append(("bare_insert", Template("POST", "/leads", port, h, {**fake_client(rng), "n": Template.MARK})))
    return out


def failed(status: int, body: bytes) -> bool:
    """A JSON-RPC error, a tool error (isError) or any non-200: an error. Found by bytes, not parsed."""
    return status not in (200, 201) or b'"isError":true' in body or body.startswith(b'{"jsonrpc":"2.0","id":1,"error"')


# ---------------------------------------------------------------------------------------------------------
# The closed loop
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Latencies (ms) by tool and errors by tool, for calls that start inside the measured window."""

    lat: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    per_interval: list[int] = field(default_factory=list)

    def count(self) -> int:
        return sum(len(v) for v in self.lat.values())

    def error_count(self) -> int:
        return sum(self.errors.values())


async def one_client(conn: Conn, calls: list[tuple[str, Template]], start_at: int, stop_event: asyncio.Event,
                     measure: list[bool], rec: Recorder, counter: list[int]) -> None:
    i = start_at
    n = len(calls)
    perf = time.perf_counter
    while not stop_event.is_set():
        name, tmpl = calls[i % n]
        raw = tmpl.render(counter[0])
        counter[0] += 1
        t = perf()
        on = measure[0]
        try:
            status, body = await conn.request(raw)
        except Exception as e:
            if on:
                rec.errors[name] = rec.errors.get(name, 0) + 1
                if len(rec.samples) < 5:
                    rec.samples.append(f"{name}: {type(e).__name__}: {e}")
            conn.close()
            conn.writer = None
            await asyncio.sleep(0.05)
            i += 1
            continue
        dt = (perf() - t) * 1000
        if on:
            if failed(status, body):
                rec.errors[name] = rec.errors.get(name, 0) + 1
                if len(rec.samples) < 5:
                    rec.samples.append(f"{name}: HTTP {status} {body[:300]!r}")
            else:
                rec.lat.setdefault(name, []).append(dt)
        i += 1


def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {p: cpu_seconds([p]) for p in pids}


async def run_load(port: int, per_client: list[list[tuple[str, Template]]], init: list[bytes | None],
                   seconds: float, warmup: float, server_pid: int | None = None,
                   tick: float = 0.0, on_tick: Any = None, db_pids: Any = None) -> dict[str, Any]:
    conns = [Conn(port) for _ in per_client]
    for conn, first in zip(conns, init):
        await conn.open()
        if first is not None:
            status, body = await conn.request(first)
            if status != 200:
                raise RuntimeError(f"initialize failed: HTTP {status} {body[:300]!r}")
    stop_event, measure, counter = asyncio.Event(), [False], [random.randrange(10**6, 10**7) * 1000]
    rec = Recorder()
    tasks = [asyncio.create_task(one_client(c, calls, k * 7, stop_event, measure, rec, counter))
             for k, (c, calls) in enumerate(zip(conns, per_client))]
    await asyncio.sleep(warmup)
    pids = proc_tree(server_pid) if server_pid else []
    measure[0] = True
    pg0 = cpu_by_pid(db_pids()) if db_pids else {}
    t0, c0, s0, m0 = time.perf_counter(), self_cpu(), cpu_seconds(pids), machine_busy()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        await asyncio.sleep(min(tick or seconds, end - now))
        if on_tick is not None:
            on_tick(rec, time.perf_counter() - t0)
    measure[0] = False
    wall, c1, s1, m1 = time.perf_counter() - t0, self_cpu(), cpu_seconds(pids), machine_busy()
    pg1 = cpu_by_pid(db_pids()) if db_pids else {}
    pg_cpu = sum(v - pg0.get(p, 0.0) for p, v in pg1.items()) if db_pids else None
    stop_event.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        c.close()
    all_ms = sorted(x for v in rec.lat.values() for x in v)
    calls = len(all_ms) + rec.error_count()
    cores = os.cpu_count() or 1
    return {
        "seconds": round(wall, 1), "calls": calls, "calls_per_s": round(calls / wall, 1),
        "errors": rec.error_count(), "errors_by_tool": rec.errors, "error_samples": rec.samples,
        "p50_ms": round(pct(all_ms, 50), 2), "p95_ms": round(pct(all_ms, 95), 2), "p99_ms": round(pct(all_ms, 99), 2),
        "max_ms": round(all_ms[-1], 1) if all_ms else None,
        "by_tool": {k: {"n": len(v), "p50_ms": round(statistics.median(v), 2), "p99_ms": round(pct(sorted(v), 99), 2)}
                    for k, v in sorted(rec.lat.items())},
        "loadgen_cpu_core_share": round((c1 - c0) / wall, 3),
        "server_cpu_core_share": round((s1 - s0) / wall, 3) if pids else None,
        "server_cpu_ms_per_call": round((s1 - s0) / max(1, calls) * 1000, 3) if pids else None,
        "postgres_cpu_ms_per_call": round(pg_cpu / max(1, calls) * 1000, 3) if pg_cpu is not None else None,
        "machine_busy_share": round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]), 3),
        "cores": cores,
    }


# ---------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------
def serve_supports_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "interfaces.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    return "--workers" in out.stdout


def start_server(url: str, workers: int | None) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    log = RESULTS / "load-server.log"
    cmd = [sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)]
    mode = "flusia serve defaults"
    if workers is not None:
        if serve_supports_workers():
            cmd += ["--workers", str(workers)]
            mode = f"--workers {workers}"
        else:
            mode = f"1 process (flusia serve has no --workers yet; asked for {workers})"
    env = {**os.environ, "DATABASE_URL": url}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_port(proc, port, log)
    time.sleep(2.0)  # worker processes, if any, start after the port opens
    return proc, port, f"{mode}: {len(proc_tree(proc.pid))} processes"


def start_bare(url: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = RESULTS / "load-bare.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bench_foundation.py"), "--serve-baseline", str(port),
                             url], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_port(proc, port, log)
    return proc, port


async def seed_org(port: int, world: OrgWorld, rng: random.Random, n_clients: int, n_deals: int, n_tasks: int,
                   concurrency: int = 8) -> None:
    """Through the server itself (JSON-RPC tools/call), a few connections at once."""
    h = mcp_headers(world.token)

    async def create(conn: Conn, name: str, args: dict[str, Any], key: str) -> str:
        status, body = await conn.request(Template("POST", "/mcp", port, h, rpc(name, args)).fixed)
        if failed(status, body):
            raise RuntimeError(f"seeding {name} failed: HTTP {status} {body[:400]!r}")
        return json.loads(body)["result"]["structuredContent"][key]

    async def worker(jobs: list[Any]) -> None:
        conn = Conn(port)
        await conn.open()
        try:
            for job in jobs:
                await job(conn)
        finally:
            conn.close()

    async def run(jobs: list[Any]) -> None:
        await asyncio.gather(*(worker(jobs[i::concurrency]) for i in range(concurrency)))

    async def add_client(conn: Conn) -> None:
        world.clients.append(await create(conn, "crm_clients_create_lead", fake_client(rng), "id"))

    await run([add_client] * n_clients)

    async def add_deal(conn: Conn) -> None:
        args = {"title": f"Offerta {rng.randrange(10**6)}", "client_id": rng.choice(world.clients),
                "value": rng.randrange(100, 90000)}
        world.deals.append(await create(conn, "crm_deals_create", args, "id"))

    async def add_task(conn: Conn) -> None:
        args = {"title": f"Chiamare {rng.randrange(10**6)}", "client_id": rng.choice(world.clients)}
        world.tasks.append(await create(conn, "crm_tasks_create", args, "id"))

    await run([add_deal] * n_deals + [add_task] * n_tasks)


def initialize_bytes(token: str, port: int) -> bytes:
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench_load", "version": "1"}}}
    return Template("POST", "/mcp", port, mcp_headers(token), body).fixed


def fmt_run(label: str, r: dict[str, Any]) -> str:
    server = f", server {r['server_cpu_core_share'] * 100:.0f}%" if r.get("server_cpu_core_share") is not None else ""
    per_call = ""
    if r.get("server_cpu_ms_per_call") is not None:
        per_call = f"\n{'':<27}CPU per call: server {r['server_cpu_ms_per_call']:.2f} ms"
        if r.get("postgres_cpu_ms_per_call") is not None:
            per_call += f", PostgreSQL backends {r['postgres_cpu_ms_per_call']:.2f} ms"
    return (f"{label:<26} {r['calls_per_s']:8.1f} calls/s  p50 {r['p50_ms']:6.2f}  p95 {r['p95_ms']:6.2f}  "
            f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}\n{'':<27}({r['calls']} calls in {r['seconds']}s; CPU of a "
            f"core: load generator {r['loadgen_cpu_core_share'] * 100:.0f}%{server}; machine busy "
            f"{r['machine_busy_share'] * 100:.0f}% of {r['cores']} cores){per_call}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg
    from psycopg.rows import dict_row

    from application import identity
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database

    try:
        import uvloop  # noqa: F401  (the loop is set in main)
    except ImportError:
        pass
    admin_url = os.environ.get("BENCH_ADMIN_URL", ADMIN_DEFAULT)
    db_name = f"flusia_load_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, db_name)
    say(f"database {db_name} created")
    res: dict[str, Any] = {"clients": args.clients, "orgs": args.orgs}
    server = bare = watch = None
    rng = random.Random(16)
    try:
        migrate(url)
        worlds = []
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            for k in range(args.orgs):
                org = identity.create_organization(conn, f"Load Org {k}", f"admin{k}@example.com", f"Admin {k}")
                worlds.append(OrgWorld(org.token))
            conn.execute("CREATE TABLE bench_baseline (id uuid PRIMARY KEY, payload jsonb NOT NULL,"
                         " created_at timestamptz NOT NULL DEFAULT now())")
            bare_ids = [str(uuid.uuid4()) for _ in range(2000)]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO bench_baseline (id, payload) VALUES (%s, %s)",
                                [(i, json.dumps(fake_client(rng))) for i in bare_ids])
            res["postgres_version"] = conn.execute("SHOW server_version").fetchone()["server_version"]

        watch = psycopg.connect(url, autocommit=True)
        db_name_ = db_name

        def db_pids() -> list[int]:
            """The PostgreSQL backends serving the bench database (their CPU counts as the server side's)."""
            rows = watch.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                 (db_name_,)).fetchall()
            return [r[0] for r in rows]

        server, port, res["server_mode"] = start_server(url, args.workers)
        say(f"flusia server on :{port} ({res['server_mode']}); seeding {args.orgs} organizations through MCP")
        for w in worlds:
            await seed_org(port, w, rng, args.seed_clients, args.seed_deals, args.seed_tasks)
        say(f"seeded: {args.seed_clients} clients, {args.seed_deals} deals, {args.seed_tasks} tasks per organization")

        per_client = [ours_templates(worlds[k % args.orgs], port, random.Random(1000 + k), 400)
                      for k in range(args.clients)]
        init = [initialize_bytes(worlds[k % args.orgs].token, port) for k in range(args.clients)]

        # 1. the bare endpoint, alone, with our server idle (nothing calls it; its projections caught up)
        if args.skip_bare:
            res["bare"] = None
        else:
            bare, bport = start_bare(url)
            say(f"bare endpoint on :{bport}: {args.clients} clients, 60% SELECT by id / 40% INSERT, {args.seconds:.0f}s")
            bare_calls = [bare_templates(bare_ids, bport, random.Random(2000 + k), 400) for k in range(args.clients)]
            res["bare"] = await run_load(bport, bare_calls, [None] * args.clients, args.seconds, args.warmup, bare.pid,
                                         db_pids=db_pids)
            stop(bare)
            bare = None
            say(fmt_run("bare endpoint", res["bare"]))

        # 2. ours
        say(f"ours: {args.clients} clients over {args.orgs} organizations, 60% reads / 40% writes, {args.seconds:.0f}s")
        spy = None
        if args.py_spy:  # a profile of the server during the measured phase (py-spy installed in the venv)
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(server.pid),
                                    "--subprocesses", "--gil", "--nonblocking", "--format", "raw", "--rate", "200",
                                    "--duration", str(int(args.seconds + args.warmup)), "--output", args.py_spy],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res["ours"] = await run_load(port, per_client, init, args.seconds, args.warmup, server.pid, db_pids=db_pids)
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.terminate()
        say(fmt_run("flusia", res["ours"]))

        # 3. soak
        if args.minutes:
            total = args.minutes * 60
            warm = max(30.0, min(60.0, total / 10))
            samples: list[tuple[float, float, int, int]] = []
            pids_now = lambda: proc_tree(server.pid)  # noqa: E731 (workers may be restarted)

            def tick(rec: Recorder, elapsed: float) -> None:
                samples.append((round(elapsed, 1), round(rss_mb(pids_now()), 1), rec.count(), rec.error_count()))
                if len(samples) % 6 == 0:
                    e, r, n, errs = samples[-1]
                    say(f"soak {e / 60:5.1f} min: rss {r:.1f} MB, {n} calls, {errs} errors")

            say(f"soak: {args.minutes:g} minutes at the same load; RSS after {warm:.0f}s of warm-up vs at the end")
            soak = await run_load(port, per_client, init, total, 0.0, server.pid, tick=10.0, on_tick=tick)
            after_warm = next((s for s in samples if s[0] >= warm), samples[0])
            end_rss = samples[-1][1]
            per_min = []
            prev = 0
            for s in samples:
                if s[0] % 60 < 10 and s[0] >= 60:
                    per_min.append(round((s[2] - prev) / 60, 1))
                    prev = s[2]
            soak.update({"warmup_s": warm, "rss_after_warmup_mb": after_warm[1], "rss_end_mb": end_rss,
                         "rss_growth": round((end_rss - after_warm[1]) / after_warm[1], 4),
                         "rss_samples": samples, "calls_per_s_by_minute": per_min})
            soak.pop("by_tool", None)
            res["soak"] = soak
            say(fmt_run("soak", soak))
        return res
    finally:
        stop(bare)
        stop(server)
        if watch is not None:
            watch.close()
        if os.environ.get("BENCH_KEEP_DB") == "1":
            say(f"kept database {db_name}: {url}")
        else:
            drop_database(admin_url, db_name)
            say(f"database {db_name} dropped")


def summarize(res: dict[str, Any]) -> str:
    o, b = res["ours"], res["bare"] or {"calls_per_s": float("nan"), "p50_ms": float("nan"), "p99_ms": float("nan")}
    ok = o["calls_per_s"] >= TARGET_CALLS_PER_S and o["p99_ms"] < TARGET_P99_MS and o["errors"] == 0
    lines = ["", "=" * 30 + " Flusia load benchmark " + "=" * 30,
             f"host: {platform.node()}  cpus: {os.cpu_count()}  python {platform.python_version()}  "
             f"postgres: {res['postgres_version']}  server: {res['server_mode']}",
             f"{res['clients']} concurrent clients (closed loop, keep-alive), {res['orgs']} organizations; "
             "JSON-RPC tools/call after one initialize per client; 60% reads / 40% writes", "",
             fmt_run("flusia", o), fmt_run("bare endpoint", b) if res["bare"] else "bare endpoint: skipped", "",
             f"throughput ratio flusia/bare: {o['calls_per_s'] / b['calls_per_s']:.2f}x   "
             f"p50 ratio: {o['p50_ms'] / b['p50_ms']:.2f}x   p99 ratio: {o['p99_ms'] / b['p99_ms']:.2f}x",
             f"target: >= {TARGET_CALLS_PER_S} calls/s, p99 < {TARGET_P99_MS:.0f} ms, 0 errors: "
             f"{'PASS' if ok else 'FAIL'}", "", "by tool (n, p50 / p99 ms):"]
    for name, v in o["by_tool"].items():
        lines.append(f"  {name:<26} {v['n']:7d}  {v['p50_ms']:7.2f} / {v['p99_ms']:7.2f}")
    if o["error_samples"]:
        lines += ["", "first errors:", *("  " + s for s in o["error_samples"])]
    if "soak" in res:
        s = res["soak"]
        soak_ok = s["errors"] == 0 and s["rss_growth"] < TARGET_RSS_GROWTH
        lines += ["", fmt_run(f"soak {s['seconds'] / 60:.0f} min", s),
                  f"soak calls/s by minute: {s['calls_per_s_by_minute']}",
                  f"server RSS after {s['warmup_s']:.0f}s warm-up {s['rss_after_warmup_mb']:.1f} MB, at the end "
                  f"{s['rss_end_mb']:.1f} MB: growth {s['rss_growth'] * 100:+.1f}% (target < "
                  f"{TARGET_RSS_GROWTH * 100:.0f}%, 0 errors): {'PASS' if soak_ok else 'FAIL'}"]
        if s["error_samples"]:
            lines += ["first soak errors:", *("  " + x for x in s["error_samples"])]
    lines += ["", "(json: bench/results/load.json; the machine is shared, so 'machine busy' beyond flusia + load "
              "generator + PostgreSQL is other work)", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent MCP clients (default 16)")
    p.add_argument("--orgs", type=int, default=4, help="organizations the clients are spread over (default 4)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each phase (default 5)")
    p.add_argument("--minutes", type=float, default=0.0, help="then soak at the same load for this many minutes")
    p.add_argument("--workers", type=int, default=None, help="passed to `flusia serve --workers N` if it exists")
    p.add_argument("--seed-clients", type=int, default=200, help="clients per organization before the run")
    p.add_argument("--seed-deals", type=int, default=100)
    p.add_argument("--seed-tasks", type=int, default=100)
    p.add_argument("--skip-bare", action="store_true", help="do not run the bare endpoint phase (quick checks)")
    p.add_argument("--py-spy", metavar="FILE", help="profile the server with py-spy during the measured phase "
                   "(collapsed stacks into FILE; `.venv/bin/pip install py-spy` first)")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    res = runner(main_async(args))
    res["host"] = {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (RESULTS / "load.json").write_text(json.dumps(res, indent=2, default=str))
    print(summarize(res))


if __name__ == "__main__":
    main()
